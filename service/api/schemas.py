"""Request and response bodies, with the examples the OpenAPI page shows."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    Strict,
    StrictBool,
    StrictInt,
    model_validator,
)

from service.ids import ID_PATTERN, MAX_ID_LENGTH, check_id
from service.serving.filters import MAX_FILTER_LENGTH, MAX_FILTERS
from service.serving.recommendations import AdHocUser

FilterText = Annotated[
    str, Strict(), Field(min_length=3, max_length=MAX_FILTER_LENGTH, examples=["genres:Comedy"])
]

# "50", not 50; the id rule shared with training (service/ids.py), its pattern in the schema
ITEM_ID_SCHEMA = {"minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": ID_PATTERN}
ItemId = Annotated[
    str,
    Strict(),
    Field(min_length=1, max_length=MAX_ID_LENGTH, json_schema_extra={"pattern": ID_PATTERN}),
    AfterValidator(check_id),
]
# As a mapping's key: the rule is published as the mapping's propertyNames (a pattern on the
# key would become patternProperties, which constrains only the keys that match).
WeightKey = Annotated[str, Strict(), AfterValidator(check_id)]


# Finite, bounded numbers only: NaN, ±Infinity and 1e308 are refused with a 422, never scored.
def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: 5 and 5.0, but not true or "5"."""
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON integer")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]

# Strict: a number is a JSON number (an integer is fine), never true or "5".
Weight = Annotated[float, Strict(), Field(ge=0, le=100, allow_inf_nan=False)]
Timestamp = Annotated[  # seconds since 1970, up to the year 3000
    float, Strict(), Field(ge=0, le=32_503_680_000, allow_inf_nan=False)
]


ProfileValue = (
    StrictInt
    | Annotated[float, Strict(), Field(allow_inf_nan=False)]
    | Annotated[str, Strict(), Field(max_length=200)]
    | Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=100)]
    | None
)


class Profile(RootModel[dict[Annotated[str, Field(max_length=64)], ProfileValue]]):
    """A user's profile: the fields the model in service was trained with (its feature spec,
    learnt from the data's profile columns; `/model` lists them). Values: numbers, text, or
    lists of labels; an unknown field or value is a 422 that names it."""

    model_config = ConfigDict(
        json_schema_extra={"example": {"age": 31, "gender": "F", "occupation": "writer"}}
    )

    @model_validator(mode="after")
    def _bounded(self) -> Profile:
        if len(self.root) > 50:
            raise ValueError(f"at most 50 profile fields, got {len(self.root)}")
        return self

    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.root.items() if v is not None}


class RecommendedItem(BaseModel):
    item_id: str
    score: float = Field(
        description="Higher ranks first. Comparable within one list and model version only: a "
        "softmax model's share of probability, a sigmoid model's probability, or the "
        "popularity source's share of the most popular item's count."
    )
    title: str
    genres: list[str]
    source: Literal["model", "profile"] = Field(
        default="model",
        description="model: the item's learnt weights; profile: an item created through the "
        "API since the model was trained, scored from its profile (the cold-item path)",
    )


class RecommendationsResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "model_version": "20261126T051500123456Z-1a2b3c4d",
                "items": [
                    {"item_id": "50", "score": 0.91, "title": "Star Wars", "genres": ["Action"]}
                ],
                "source": "model",
                "cached": False,
            }
        }
    )

    model_version: str
    items: list[RecommendedItem]
    source: Literal["model", "profile", "popularity"]
    cached: bool
    variant: Literal["control", "candidate"] | None = Field(
        default=None,
        description="while an experiment runs, the variant this user is in (always the same "
        "for a user); null outside experiments and for ad-hoc lists",
    )
    recommendation_id: str | None = Field(
        default=None,
        description="this answer's own id (cached or not): send it with the interactions the "
        "list led to (POST /users/{id}/interactions)",
    )
    degraded: bool = False  # the store was unreadable: the bundle's history only, not cached
    # Item ids in the request that the model in service does not know: left out of scoring.
    unknown_items: list[str] = Field(default_factory=list, max_length=20)


class ScoreRequest(BaseModel):
    """One ad-hoc user: the history is the union of items, vector and weights (each optional;
    an item in weights keeps its weight, the others weigh 1), an optional profile."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"items": ["50", "181", "258"], "profile": {"gender": "F"}, "n": 5}
        },
    )

    items: list[ItemId] | None = Field(default=None, max_length=10_000)
    vector: list[Annotated[float, Strict(), Field(allow_inf_nan=False)]] | None = None
    weights: dict[WeightKey, Weight] | None = Field(
        default=None, max_length=10_000, json_schema_extra={"propertyNames": ITEM_ID_SCHEMA}
    )
    profile: Profile | None = None
    n: JsonInt = Field(default=10, ge=1)
    exclude: list[ItemId] = Field(default_factory=list, max_length=10_000)
    exclude_seen: StrictBool = True
    candidates: list[ItemId] | None = Field(default=None, min_length=1, max_length=10_000)
    filter: list[FilterText] = Field(
        default_factory=list,
        max_length=MAX_FILTERS,
        description="conditions on item fields, all of which must hold: field:value, "
        "field:a|b (either), field:low..high (numbers; either bound optional)",
    )

    @model_validator(mode="after")
    def _binary_vector(self) -> ScoreRequest:
        if self.vector is not None and any(v not in (0, 1) for v in self.vector):
            raise ValueError("vector entries must be 0 or 1")
        return self

    def ad_hoc_user(self) -> AdHocUser:
        return AdHocUser(
            self.items, self.vector, self.weights, self.profile.root if self.profile else None,
            self.n, self.exclude, self.exclude_seen, self.candidates, self.filter,
        )  # fmt: skip


class BatchScoreRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"users": [{"items": ["50"]}, {"profile": {"age": 25}}]}},
    )

    users: list[ScoreRequest] = Field(min_length=1)


class BatchScoreResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "results": [
                    {"model_version": "20261126T051500123456Z-1a2b3c4d", "items": [],
                     "source": "popularity", "cached": False}
                ]
            }
        }
    )  # fmt: skip

    results: list[RecommendationsResponse]


class Interaction(BaseModel):
    """One item with the time it happened (absent: the time it is recorded)."""

    model_config = ConfigDict(extra="forbid")

    item: ItemId
    timestamp: Timestamp | None = None


class InteractionsRequest(BaseModel):
    """Items as ids, or as {"item", "timestamp"} objects where the time is known: a time travels
    with its item, so there is no second list whose length could disagree."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"items": ["50", {"item": "172", "timestamp": 1764133260}]}},
    )

    items: list[ItemId | Interaction] = Field(min_length=1, max_length=1000)
    recommendation_id: Annotated[str, Strict(), Field(pattern=r"^[0-9a-f]{32}$")] | None = Field(
        default=None,
        description="the list these interactions came from (an answer's recommendation_id); "
        "absent: the most recent list served to this user within the window that held the item",
    )

    def item_ids(self) -> list[str]:
        return [i.item if isinstance(i, Interaction) else i for i in self.items]

    def timestamps(self, now: float) -> list[float]:
        """Each item's time: its own where given, else `now`."""
        return [
            i.timestamp if isinstance(i, Interaction) and i.timestamp is not None else now
            for i in self.items
        ]


class InteractionsResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"user_id": "196", "recorded": 2, "store": "redis"}}
    )

    user_id: str
    recorded: int
    store: str
    replayed: bool = False  # the Idempotency-Key was seen: nothing recorded again
    # Recorded, but not in the catalogue of the model in service: they count from the next
    # retrain on (which adds them to the catalogue).
    unknown_items: list[str] = Field(default_factory=list, max_length=20)
    attributed_to: list[str] = Field(
        default_factory=list, description="the recommendation_ids these interactions count for"
    )
    attribution_note: str | None = Field(
        default=None,
        description="set when the recommendation_id sent is not in the store (expired or never "
        "recorded): the interactions are recorded all the same, attributed to no list",
    )


class VersionOnline(BaseModel):
    lists: int
    clicked_lists: int
    rate: float
    ci95: tuple[float, float]
    variant: Literal["control", "candidate"] | None = None
    since: str


class VariantOnline(BaseModel):
    lists: int
    clicked_lists: int
    rate: float
    ci95: tuple[float, float]
    versions: list[str] = Field(description="the versions that served this variant")


class Difference(BaseModel):
    value: float
    ci95: tuple[float, float]


class ExperimentOnline(BaseModel):
    id: str
    candidate: str
    control: str = Field(description="the version in service when the experiment started")
    share: float
    shadow: bool
    started: str
    variants: dict[Literal["control", "candidate"], VariantOnline]
    difference: Difference = Field(description="candidate's rate less control's (Newcombe)")
    shadow_lists: int = Field(description="shadow mode: users the candidate scored on the side")
    shadow_overlap: float | None = Field(
        description="shadow mode: the mean share of a served list the candidate's list held"
    )


class OnlineStats(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {"versions": {"20261126T051500123456Z-1a2b3c4d": {
                "lists": 1200, "clicked_lists": 96, "rate": 0.08, "ci95": [0.066, 0.097],
                "variant": None, "since": "2026-11-26T05:00:00+00:00"}}}
        }
    )  # fmt: skip

    versions: dict[str, VersionOnline]
    experiment: ExperimentOnline | None = Field(
        None, description="the running experiment's variants, counted since it started"
    )


class ProfileResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {"user_id": "new-1", "profile": {"gender": "F", "age": 31}, "created": True}
        }
    )

    user_id: str
    profile: dict[str, Any]
    created: bool
    replayed: bool = False


class ItemProfile(RootModel[dict[Annotated[str, Field(max_length=64)], ProfileValue]]):
    """An item's profile: a title and the item fields of the model in service (its item spec;
    `/model` lists them), typed as for user profiles; an unknown field or value is a 422."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {"title": "Tomorrow's Film (2026)", "year": 2026, "genres": ["Comedy"]}
        }
    )

    @model_validator(mode="after")
    def _bounded(self) -> ItemProfile:
        if len(self.root) > 50:
            raise ValueError(f"at most 50 item fields, got {len(self.root)}")
        return self


class ItemResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "item_id": "new-film-1", "profile": {"title": "Tomorrow's Film", "year": 2026},
                "available": True, "source": "api", "in_model": False,
                "model_version": "20261126T051500123456Z-1a2b3c4d",
            }
        }
    )  # fmt: skip

    item_id: str
    profile: dict[str, Any]
    available: bool
    source: Literal["bundle", "api"] = Field(
        description="bundle: from the model's training data; api: created or re-described "
        "through PUT /items/{id} since"
    )
    in_model: bool = Field(
        description="true: the model in service learnt this item's weights; false: it is "
        "scored from its profile until the next retrain"
    )
    model_version: str
    # The catalogue could not be read (the store is down): the service's last view answered.
    degraded: bool = False
    created: bool | None = None  # PUT only


class Availability(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"available": False}})

    available: StrictBool


class AvailabilityResponse(BaseModel):
    item_id: str
    available: bool


class Health(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "status": "degraded",
                "model_version": "20261126T051500123456Z-1a2b3c4d",
                "cache": "redis:unreachable",
                "detail": {"refused_versions": {}},
            }
        }
    )

    status: str
    model_version: str | None = None
    cache: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)

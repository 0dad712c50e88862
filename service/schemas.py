"""Request and response bodies, with the examples the OpenAPI page shows."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    Strict,
    StrictInt,
    model_validator,
)

ItemId = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) else v)]
# Finite, bounded numbers only: NaN, ±Infinity and 1e308 are refused with a 422, never scored.
Weight = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Timestamp = Annotated[float, Field(ge=0, le=32_503_680_000, allow_inf_nan=False)]  # ≤ year 3000


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
    score: float
    title: str
    genres: list[str]


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
    degraded: bool = False  # the store was unreadable: the bundle's history only, not cached


class ScoreRequest(BaseModel):
    """One ad-hoc user: at most one of items / vector / weights, an optional profile."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"items": ["50", "181", "258"], "profile": {"gender": "F"}, "n": 5}
        },
    )

    items: list[ItemId] | None = Field(default=None, max_length=10_000)
    vector: list[Annotated[float, Field(allow_inf_nan=False)]] | None = None
    weights: dict[str, Weight] | None = None
    profile: Profile | None = None
    n: StrictInt = Field(default=10, ge=1)
    exclude: list[ItemId] = Field(default_factory=list, max_length=10_000)
    exclude_seen: bool = True
    candidates: list[ItemId] | None = Field(default=None, min_length=1, max_length=10_000)

    @model_validator(mode="after")
    def _one_history(self) -> ScoreRequest:
        given = [k for k in ("items", "vector", "weights") if getattr(self, k)]  # [] is none
        if len(given) > 1:
            raise ValueError(f"give at most one of items, vector, weights (got {given})")
        if self.vector is not None and any(v not in (0, 1) for v in self.vector):
            raise ValueError("vector entries must be 0 or 1")
        return self


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


class InteractionsRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"items": ["50", "172"], "timestamps": [1764133200, 1764133260]}
        },
    )

    items: list[ItemId] = Field(min_length=1, max_length=1000)
    timestamps: list[Timestamp] | None = None

    @model_validator(mode="after")
    def _aligned(self) -> InteractionsRequest:
        if self.timestamps is not None and len(self.timestamps) != len(self.items):
            raise ValueError(
                f"timestamps has {len(self.timestamps)} entries, items has {len(self.items)}"
            )
        return self


class InteractionsResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"user_id": "196", "recorded": 2, "store": "redis"}}
    )

    user_id: str
    recorded: int
    store: str
    replayed: bool = False  # the Idempotency-Key was seen: nothing recorded again


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

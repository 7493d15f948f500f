"""The typed request bodies. Strict: a string where a number belongs, an unknown field, or a float where
an integer belongs is refused by name (4xx), never coerced."""
from __future__ import annotations

from typing import List, Optional

from pydantic import BaseModel, ConfigDict, Field

HEAD = "sentence_classification_head"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    delta: Optional[str] = Field(None, description="the delta to run, or null for the plain base")
    text: Optional[str] = Field(None, description="raw text, encoded with the server's BPE")
    tokens: Optional[List[int]] = Field(None, description="dictionary ids, instead of text")
    timeout_ms: Optional[int] = Field(None, ge=1, description="give up after this long (capped by the server)")


class GenerateRequest(_Request):
    beam: int = Field(1, ge=1, description="beam size (at most --max-beam)")
    max_len: int = Field(64, ge=1, description="at most this many generated tokens (at most --max-len)")
    min_len: int = Field(1, ge=1)
    lenpen: float = Field(1.0, ge=0.0, le=10.0, description="length penalty")
    nbest: int = Field(1, ge=1, description="hypotheses returned, at most beam")


class ClassifyRequest(_Request):
    head: str = Field(HEAD, min_length=1, description="the classification head of the delta")

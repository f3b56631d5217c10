import re
import time

from prefect import task
from pydantic import BaseModel, Field

# A small sample of very common English words: the scorer only knows English.
COMMON_WORDS = {"a", "and", "be", "for", "in", "is", "it", "of", "on", "that", "the", "to"}


class Document(BaseModel):
    """The request body of POST /jobs, and the task's parameter."""

    title: str = Field(min_length=1, max_length=200, examples=["Release notes"])
    text: str = Field(
        min_length=1,
        max_length=100_000,
        examples=["The new version is faster. It starts in half the time."],
    )


class DocumentScore(BaseModel):
    """What the task computes: the result of a completed job."""

    title: str = Field(examples=["Release notes"])
    words: int = Field(examples=[11])
    sentences: int = Field(examples=[2])
    reading_ease: float = Field(
        description="Flesch reading ease: higher is easier, 60-70 is plain English",
        examples=[77.9],
    )
    reading_time_seconds: int = Field(examples=[3])


def syllables(word: str) -> int:
    return max(1, len(re.findall(r"[aeiouy]+", word.lower().removesuffix("e"))))


def readability(document: Document) -> DocumentScore:
    words = re.findall(r"[A-Za-z']+", document.text)
    if not words or sum(w.lower() in COMMON_WORDS for w in words) / len(words) < 0.05:
        raise ValueError(f"{document.title!r} does not look like English text")
    sentences = max(1, len(re.findall(r"[.!?]+", document.text)))
    per_word = sum(syllables(w) for w in words) / len(words)
    return DocumentScore(
        title=document.title,
        words=len(words),
        sentences=sentences,
        reading_ease=round(206.835 - 1.015 * len(words) / sentences - 84.6 * per_word, 1),
        reading_time_seconds=round(len(words) / 4),  # about 240 words a minute
    )


# region task
@task(log_prints=True)
def score_document(document: Document) -> dict:
    time.sleep(2)  # stands in for a slow model
    score = readability(document)  # ValueError for a text it cannot score: the job fails
    print(f"Scored {score.title!r}: {score.words} words, reading ease {score.reading_ease}")
    # Plain data in result storage: any version of the app can read it back.
    return score.model_dump()
    # endregion task

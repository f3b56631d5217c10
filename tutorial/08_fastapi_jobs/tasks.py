import re
import time

from prefect import get_client, get_run_logger, task
from prefect.context import TaskRunContext
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings
from prefect.states import Cancelled, State
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


def count_sentences(text: str) -> int:
    return max(1, len(re.findall(r"[.!?]+", text)))


def readability(document: Document) -> DocumentScore:
    words = re.findall(r"[A-Za-z']+", document.text)
    if not words or sum(w.lower() in COMMON_WORDS for w in words) / len(words) < 0.05:
        raise ValueError(f"{document.title!r} does not look like English text")
    sentences = count_sentences(document.text)
    per_word = sum(syllables(w) for w in words) / len(words)
    return DocumentScore(
        title=document.title,
        words=len(words),
        sentences=sentences,
        reading_ease=round(206.835 - 1.015 * len(words) / sentences - 84.6 * per_word, 1),
        reading_time_seconds=round(len(words) / 4),  # about 240 words a minute
    )


# region checkpoint
def cancel_requested() -> bool:
    """Has someone asked to cancel this run (DELETE /jobs/{id} marks it Cancelling)?
    Prefect never stops a background run itself: the task asks, between pieces of its work.
    Each call reads the run's states from the Prefect API: ask every second or so."""
    context = TaskRunContext.get()
    if context is None:  # called as a plain function (score_document.fn): nothing to cancel
        return False
    query = {"task_run_id": str(context.task_run.id)}
    no_retries = temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0})
    try:
        # One short try, on the task engine's own client: Prefect's 60 s timeout and retries
        # would stall the job while the API is slow, and an error must not fail it.
        with no_retries, get_client(sync_client=True) as prefect:
            states = prefect.request("GET", "/task_run_states/", params=query, timeout=5).json()
    except Exception as error:  # the next checkpoint asks again
        get_run_logger().warning("Could not ask whether the job was cancelled: %r", error)
        return False
    # The whole history: a run cancelled in the queue is still handed to a task server,
    # which records Pending and Running over its Cancelling.
    return any(state["type"] == "CANCELLING" for state in states)
    # endregion checkpoint


# region task
@task(log_prints=True)
def score_document(document: Document) -> dict | State:
    for _ in range(min(10, count_sentences(document.text))):  # a slow model: 1 s a sentence
        if cancel_requested():  # a checkpoint before each piece of work: none is half done
            return Cancelled(message="cancelled before it finished")
        time.sleep(1)
    score = readability(document)  # ValueError for a text it cannot score: the job fails
    print(f"Scored {score.title!r}: {score.words} words, reading ease {score.reading_ease}")
    # Plain data in result storage: any version of the app can read it back.
    return score.model_dump()
    # endregion task

"""A new job at the door: every check on the request, then the job stored and queued.

Shared by the JSON API and the page (which posts to the same route), so both refuse the same way.
All checks run before anything is written; if writing fails half-way, what was written is removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, BinaryIO

from app import spend, tasks
from app.auth import Principal
from app.db import session_scope
from app.errors import InputError
from app.images import MAX_FILE_BYTES, MAX_IMAGES, IngestedImage, ingest_image
from app.masks import ingest_mask
from app.models import Task
from app.prompts import check_prompt
from app.web.deps import Studio

# Control characters, and the bidirectional overrides that can make a name read backwards.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u202a-\u202e\u2066-\u2069\u200e\u200f]")


@dataclass(frozen=True)
class Upload:
    filename: str | None
    size: int | None
    file: BinaryIO


def display_name(filename: str | None) -> str:
    """A browser-sent name made safe to show (never used as a path)."""
    name = _CONTROL.sub("", (filename or "").replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return name[:120] or "unnamed"


def check_model_and_options(model: str | None, raw: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The model and its options, validated the way EvoLink documents them."""
    model = (model or "qwen-image-edit").strip()
    if model not in tasks.MODELS:
        raise InputError(
            "invalid_model", f"Unknown model {model!r}; choose one of {', '.join(tasks.MODELS)}."
        )
    given = {k: v.strip() for k, v in raw.items() if v is not None and v.strip() != ""}
    if model == "qwen-image-edit":
        if given:
            raise InputError(
                "invalid_option",
                f"Options {', '.join(sorted(given))} need the model qwen-image-edit-plus.",
            )
        return model, {}
    options: dict[str, Any] = {}
    if "n" in given:
        options["n"] = _int(given["n"], "n", 1, 6)
    if "seed" in given:
        options["seed"] = _int(given["seed"], "seed", 0, 2147483647)
    if "negative_prompt" in given:
        if len(given["negative_prompt"]) > 500:
            raise InputError(
                "invalid_option", "negative_prompt is longer than 500 characters (the limit)."
            )
        options["negative_prompt"] = given["negative_prompt"]
    if "size" in given:
        m = re.fullmatch(r"(\d{3,4})x(\d{3,4})", given["size"])
        if not m or not all(512 <= int(v) <= 2048 for v in m.groups()):
            raise InputError(
                "invalid_option",
                "size must look like 1024x1024, each side between 512 and 2048 pixels.",
            )
        if options.get("n", 1) != 1:
            raise InputError("invalid_option", "size can only be set when n is 1.")
        options["size"] = given["size"]
    for flag in ("prompt_extend", "watermark"):
        if flag in given:
            value = given[flag].lower()
            if value not in ("true", "false"):
                raise InputError("invalid_option", f"{flag} must be true or false.")
            options[flag] = value == "true"
    return model, options


def _int(value: str, name: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise InputError("invalid_option", f"{name} must be a whole number from {low} to {high}.")
    return number


def accept_job(
    studio: Studio,
    user: Principal,
    *,
    prompt: str | None,
    uploads: list[Upload],
    model: str | None,
    options: dict[str, str],
    client_ip: str | None,
    mask: Upload | None = None,
) -> Task:
    text = check_prompt(prompt)
    model, opts = check_model_and_options(model, options)
    if not uploads:
        raise InputError(
            "no_images", f"Add at least one image (1 to {MAX_IMAGES}) in the field 'images'."
        )
    if len(uploads) > MAX_IMAGES:
        raise InputError(
            "too_many_images", f"{len(uploads)} images were sent; at most {MAX_IMAGES} are allowed."
        )
    # Limits first: a refused request must not pay for decoding three images.
    with session_scope(studio.sessions) as session:
        tasks.check_limits(
            session, studio.settings, user.user_id, client_ip, spend.requested_images(opts)
        )
    inputs = []
    for index, upload in enumerate(uploads):
        name = display_name(upload.filename)
        label = f'image {index + 1} ("{name}")'
        if upload.size is not None and upload.size > MAX_FILE_BYTES:
            raise InputError(
                "file_too_large",
                f"{label} is {upload.size / 1048576:.1f} MB; each image may be at most 10 MB.",
                413,
            )
        upload.file.seek(0)
        inputs.append(tasks.NewInput(ingest_image(upload.file, label=label), name))

    mask_image = None
    if mask is not None:
        mask.file.seek(0)
        first = inputs[0].image
        mask_image = ingest_mask(mask.file, width=first.width, height=first.height)

    task = store_job(
        studio,
        user,
        prompt=text,
        model=model,
        options=opts,
        inputs=inputs,
        client_ip=client_ip,
        mask=mask_image,
    )
    if studio.worker is not None:
        studio.worker.wake()
    return task


def store_job(
    studio: Studio,
    user: Principal,
    *,
    prompt: str,
    model: str,
    options: dict[str, Any],
    inputs: list[tasks.NewInput],
    client_ip: str | None,
    mask: IngestedImage | None = None,
    source: str = "web",
    client_callback_url: str | None = None,
) -> Task:
    """Store checked inputs and queue the job, for every entrance (page and /api, /v1 gateway).

    The job row, its files and its spend-ledger row are one transaction; if it fails, the files
    it wrote are removed again. Files of an old job the history cap dropped go after the commit.
    """
    written = [(i.image.sha256, i.image.ext) for i in inputs]
    if mask is not None:
        written.append((mask.sha256, mask.ext))
    try:
        with session_scope(studio.sessions) as session:
            task, freed = tasks.create_task(
                session,
                studio.storage,
                studio.settings,
                user_id=user.user_id,
                user_name=user.name,
                prompt=prompt,
                model=model,
                options=options,
                inputs=inputs,
                client_ip=client_ip,
                source=source,
                mask=mask,
            )
            if client_callback_url:
                task.client_callback_url = client_callback_url
                task.client_callback_state = "pending"
            # The spend ledger row, in the same transaction: the job and its cost stand or fall
            # together, and deleting the job later does not lower the daily spend.
            spend.record(session, studio.settings, task)
            task_id = task.id
    except BaseException:
        with session_scope(studio.sessions) as session:
            tasks.remove_files(session, studio.storage, written)
        raise
    with session_scope(studio.sessions) as session:
        tasks.remove_files(session, studio.storage, freed)
        task = session.get(Task, task_id)
        assert task is not None
        _ = task.files, task.attempt_rows
    return task

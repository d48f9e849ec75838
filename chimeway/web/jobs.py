"""The jobs pages: a filtered listing, one job with every attempt, and retry/cancel/delete."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chimeway.errors import InvalidInputError
from chimeway.queue import JOB_STATES, JobFilter
from chimeway.queue.browse import ARGS_SEARCH_WINDOW, MAX_BULK, parse_ids
from chimeway.web.http import Request, Response

if TYPE_CHECKING:
    from chimeway.web.dashboard import Dashboard, View

__all__ = ["parse_time", "register"]

PAGE = 50
FILTERS = ("queue", "state", "worker", "args", "since", "until")
VERBS = {"retry": "retried", "cancel": "cancelled", "delete": "deleted"}


def parse_time(value: str | None, name: str) -> datetime | None:
    """A ``datetime-local`` form value (read as UTC), or ``None`` when blank."""
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(f"{name} {value!r} is not a date and time like 2026-01-31T14:00") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _filter_values(source: Any) -> dict[str, str | None]:
    return {name: source(name) for name in FILTERS}


def _job_filter(values: dict[str, str | None]) -> JobFilter:
    state = values["state"]
    if state is not None and state not in JOB_STATES:
        raise InvalidInputError(f"state must be one of {', '.join(JOB_STATES)}, got {state!r}")
    return JobFilter(queue=values["queue"], state=state, worker=values["worker"], args_text=values["args"],
                     inserted_after=parse_time(values["since"], "since"),
                     inserted_before=parse_time(values["until"], "until"))


def _before(request: Request) -> int | None:
    raw = request.arg("before")
    if raw is None:
        return None
    return parse_ids([raw])[0]


def jobs_page(view: View) -> Response:
    values = _filter_values(view.request.arg)
    where = _job_filter(values)
    jobs = view.app.queue.list_jobs(where, limit=PAGE, before_id=_before(view.request))
    next_url = view.url("/jobs", **values, before=jobs[-1].id) if len(jobs) == PAGE else None
    return view.render("jobs.html", jobs=jobs, values=values, states=JOB_STATES,
                       queues=sorted(view.app.queue.queues), next_url=next_url,
                       window=ARGS_SEARCH_WINDOW, max_bulk=MAX_BULK)


def job_page(view: View, id: str) -> Response:
    job = view.app.queue.details(int(id))
    delivery_id = job.args.get("delivery_id") if job.worker == "chimeway.deliver" else None
    return view.render("job.html", job=job, delivery_id=delivery_id)


def _act(view: View, verb: str, where: JobFilter) -> int:
    queue = view.app.queue
    if verb == "retry":
        return queue.retry_many(where)
    if verb == "cancel":
        return queue.cancel_many(where)
    if verb == "delete":
        return queue.delete_many(where)
    raise InvalidInputError(f"unknown action {verb!r}; expected retry, cancel or delete")


def bulk_action(view: View) -> Response:
    request = view.request
    verb = request.field("action") or ""
    scope = request.field("scope") or "selected"
    values = _filter_values(request.field)
    if scope == "matching":
        where = _job_filter(values)
    else:
        ids = parse_ids(request.form.get("ids", []))
        if not ids:
            raise InvalidInputError("select at least one job, or act on all jobs that match the filter")
        where = JobFilter(ids=ids)
    count = _act(view, verb, where)
    return view.back("/jobs", **values, flash=VERBS.get(verb), n=count)


def job_action(view: View, id: str, verb: str) -> Response:
    job_id = int(id)
    view.app.queue.details(job_id)
    count = _act(view, verb, JobFilter(ids=(job_id,)))
    if verb == "delete" and count:
        return view.back("/jobs", flash="deleted", n=count)
    return view.back(f"/jobs/{job_id}", flash=VERBS.get(verb), n=count)


def register(dashboard: Dashboard) -> None:
    dashboard.route("GET", "/jobs")(jobs_page)
    dashboard.route("POST", "/jobs/action")(bulk_action)
    dashboard.route("GET", "/jobs/{id:int}")(job_page)
    dashboard.route("POST", "/jobs/{id:int}/{verb}")(job_action)

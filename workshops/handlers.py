"""The workshops' pages and REST API, served by the hub itself (like ``/hub/nodes``).

``GET    /hub/api/workshops``         every workshop, with its join code (admin:users)
``POST   /hub/api/workshops``         create one: ``{"name", "size", "start", "end",
                                      "environments", "cpu", "memory", "instructors"}``
                                      (admin:users); 201 with the workshop and its code
``GET    /hub/api/workshops/NAME``    one workshop (admin:users)
``PATCH  /hub/api/workshops/NAME``    ``{"end": TIME}`` and/or ``{"size": N}`` (admin:users)
``DELETE /hub/api/workshops/NAME``    end it now (admin:users); 202, done in the background
``POST   /hub/api/workshops-check``   end what is over, pre-pull what starts soon (only the
                                      ``workshops`` service's custom scope)
``GET    /hub/workshops``             the admin page: the workshops and a form to create one
``GET    /hub/workshop``              the join page: code + a name, no account needed

Every workshop action creates or deletes users, hence ``admin:users``; reading a workshop
shows its join code, which makes users, hence ``admin:users`` too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from deskhub.spawner.admin import spawner_of
from deskhub.spawner.catalogue import Catalogue

from .images import prepull_workshop, pull_plan, report_of
from .lifecycle import admit, create_hub_objects, end_workshop
from .model import (
    Workshop,
    WorkshopError,
    format_time,
    normalize_code,
    normalize_participant_name,
    patched,
    workshop_from_request,
)
from .narrowing import narrow
from .store import WorkshopStore, shared

log = logging.getLogger("JupyterHub.deskhub.workshops")
CHECK_SCOPE = "custom:deskhub:workshops:check"
_TASKS: dict[str, asyncio.Task[Any]] = {}  # background work by key, one at a time each


@dataclass(frozen=True)
class WorkshopSettings:
    """The site YAML's ``workshops`` section, as the handlers use it. Example::

    WorkshopSettings(Path("/var/lib/deskhub/workshops.json"), max_size=40,
                     code_length=8, prepull_before=3600)
    """

    store_path: Path  # STATE_DIR/workshops.json
    max_size: int = 100  # the most participants an admin may allow in one workshop
    code_length: int = 8  # letters and digits of a join code
    prepull_before: float = 3600.0  # seconds before a start when its images are pulled again


def _background(key: str, coroutine: Any) -> None:
    """Run ``coroutine`` unless work under ``key`` is still running; log its failure."""
    running = _TASKS.get(key)
    if running is not None and not running.done():
        coroutine.close()
        return

    def finished(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", key, exc_info=task.exception())

    task = asyncio.ensure_future(coroutine)
    task.add_done_callback(finished)
    _TASKS[key] = task


class WorkshopsMixin:
    """What every workshop handler shares: the settings, the store, the catalogue."""

    settings: dict[str, Any]
    workshop_settings: WorkshopSettings

    def initialize(self, workshop_settings: WorkshopSettings) -> None:
        self.workshop_settings = workshop_settings

    @property
    def store(self) -> WorkshopStore:
        return shared(self.workshop_settings.store_path)

    def full_catalogue(self) -> Catalogue:
        """Every environment (not narrowed for anyone)."""
        spawner = spawner_of(self)  # type: ignore[arg-type]
        return Catalogue.from_site(spawner.environment_specs().environments)

    def start_prepull(self, workshop: Workshop) -> None:
        spawner = spawner_of(self)  # type: ignore[arg-type]
        plan = pull_plan(spawner.nodes, narrow(self.full_catalogue(), workshop))
        _background(f"prepull {workshop.name}", prepull_workshop(workshop.name, plan))

    def start_end(self, workshop: Workshop) -> None:
        self.store.ending.add(workshop.name)
        _background(f"end {workshop.name}", end_workshop(self, self.store, workshop))

    def model(self, workshop: Workshop) -> dict[str, Any]:
        now = datetime.now(UTC)
        state = "ending" if workshop.name in self.store.ending else workshop.state(now)
        base = self.settings["base_url"]  # type: ignore[index]
        return {
            **workshop.to_json(),
            "state": state,
            "group": workshop.group,
            "role": workshop.role,
            "usernames": workshop.usernames(),
            "join_url": f"{base}hub/workshop",
            "images": report_of(workshop.name).to_json(),
        }

    async def create(self, body: dict[str, Any]) -> Workshop:
        """Check, record and set up a new workshop; :class:`WorkshopError` if refused."""
        settings = self.workshop_settings
        await spawner_of(self).pool.ready()  # type: ignore[arg-type]
        now = datetime.now(UTC)
        workshop = workshop_from_request(
            body,
            now=now,
            environments=self.full_catalogue().names(),
            is_user=lambda name: self.find_user(name) is not None,
            taken_codes=self.store.codes(),
            max_size=settings.max_size,
            code_length=settings.code_length,
        )
        if self.store.get(workshop.name) is not None:
            raise WorkshopError(f"There is already a workshop named {workshop.name!r}.")
        create_hub_objects(self, workshop)
        soon = now >= workshop.start - timedelta(seconds=settings.prepull_before)
        workshop = replace(workshop, prepulled_before_start=soon)
        self.store.put(workshop)
        self.log.info(  # type: ignore[attr-defined]
            "%s created workshop %s (%d places, %s to %s, %s)",
            self.current_user.name,  # type: ignore[attr-defined]
            workshop.name,
            workshop.size,
            format_time(workshop.start),
            format_time(workshop.end),
            ", ".join(workshop.environments),
        )
        self.start_prepull(workshop)
        return workshop


def _json_body(handler: APIHandler) -> dict[str, Any]:
    try:
        body = json.loads(handler.request.body or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise web.HTTPError(400, "Send the workshop as a JSON object.")
    return body


class WorkshopsAPIHandler(WorkshopsMixin, APIHandler):
    @needs_scope("admin:users")
    async def get(self) -> None:
        self.write(json.dumps([self.model(w) for w in self.store.all()]))

    @needs_scope("admin:users")
    async def post(self) -> None:
        try:
            workshop = await self.create(_json_body(self))
        except WorkshopError as err:
            raise web.HTTPError(400, str(err)) from err
        self.set_status(201)
        self.write(json.dumps(self.model(workshop)))


class WorkshopAPIHandler(WorkshopsMixin, APIHandler):
    def _workshop(self, name: str) -> Workshop:
        workshop = self.store.get(name)
        if workshop is None:
            raise web.HTTPError(404, f"There is no workshop named {name!r}.")
        return workshop

    @needs_scope("admin:users")
    async def get(self, workshop_name: str) -> None:
        self.write(json.dumps(self.model(self._workshop(workshop_name))))

    @needs_scope("admin:users")
    async def patch(self, workshop_name: str) -> None:
        workshop = self._workshop(workshop_name)
        if workshop_name in self.store.ending:
            raise web.HTTPError(400, "This workshop is ending already.")
        try:
            changed = patched(workshop, _json_body(self), self.workshop_settings.max_size)
        except WorkshopError as err:
            raise web.HTTPError(400, str(err)) from err
        self.store.put(changed)
        self.log.info(
            "%s changed workshop %s: ends %s, %d places",
            self.current_user.name,
            workshop_name,
            format_time(changed.end),
            changed.size,
        )
        self.write(json.dumps(self.model(changed)))

    @needs_scope("admin:users")
    async def delete(self, workshop_name: str) -> None:
        workshop = self._workshop(workshop_name)
        now = datetime.now(UTC)
        if workshop.end > now:
            workshop = replace(workshop, end=max(now, workshop.start + timedelta(seconds=1)))
            self.store.put(workshop)
        self.log.info("%s ended workshop %s now", self.current_user.name, workshop_name)
        self.start_end(workshop)
        self.set_status(202)
        self.write(json.dumps(self.model(workshop)))


class WorkshopCheckHandler(WorkshopsMixin, APIHandler):
    """Called every few seconds by the ``workshops`` service."""

    def _log(self) -> None:
        # a check every few seconds: only failures reach the hub's log above debug level
        if self.get_status() < 300:
            self.log.debug("%d POST %s", self.get_status(), self.request.uri)
            return
        super()._log()

    async def post(self) -> None:
        if self.current_user is None or CHECK_SCOPE not in self.expanded_scopes:
            raise web.HTTPError(403, f"Checking workshops requires the scope {CHECK_SCOPE}.")
        now = datetime.now(UTC)
        before = self.workshop_settings.prepull_before
        for workshop in self.store.all():
            if workshop.state(now) == "ended":
                self.start_end(workshop)
            elif workshop.prepull_due(now, before):
                self.store.put(replace(workshop, prepulled_before_start=True))
                self.start_prepull(workshop)
        self.set_status(204)


def _local_time(value: str, offset_minutes: str, what: str) -> str:
    """A browser's ``datetime-local`` value and its UTC offset as an ISO 8601 time."""
    try:
        moment = datetime.fromisoformat(value.strip())
        offset = timezone(timedelta(minutes=int(offset_minutes or 0)))
    except ValueError:
        raise WorkshopError(f"Give the {what} as a date and time.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=offset)
    return moment.isoformat()


class WorkshopsPageHandler(WorkshopsMixin, BaseHandler):
    async def _render(self, status: int = 200, error: str = "", form: Any = None) -> None:
        created = self.get_argument("created", "")
        html = await self.render_template(
            "workshops.html",
            workshops=[self.model(w) for w in self.store.all()],
            environments=self.full_catalogue(),
            created=self.store.get(created) if created else None,
            error=error,
            form=form or {},
            format_time=lambda text: format_time(datetime.fromisoformat(text)),
        )
        self.set_status(status)
        self.finish(html)

    @web.authenticated
    @needs_scope("admin:users")
    async def get(self) -> None:
        await spawner_of(self).pool.ready()
        await self._render()

    @web.authenticated
    @needs_scope("admin:users")
    async def post(self) -> None:
        form = {k: self.get_argument(k, "") for k in ("name", "size", "start", "end", "cpu")}
        form.update(
            memory=self.get_argument("memory", ""),
            instructors=self.get_argument("instructors", ""),
            environments=self.get_arguments("environments"),
        )
        action = self.get_argument("action", "create")
        try:
            if action == "end":
                workshop = self.store.get(self.get_argument("workshop", ""))
                if workshop is None:
                    raise WorkshopError("There is no such workshop.")
                now = datetime.now(UTC)
                if workshop.end > now:
                    workshop = replace(
                        workshop, end=max(now, workshop.start + timedelta(seconds=1))
                    )
                    self.store.put(workshop)
                self.log.info("%s ended workshop %s now", self.current_user.name, workshop.name)
                self.start_end(workshop)
                self.redirect(f"{self.hub.base_url}workshops", status=303)
                return
            offset = self.get_argument("utc_offset", "0")
            body = {
                "name": form["name"].strip(),
                "size": form["size"],
                "start": _local_time(form["start"], offset, "start"),
                "end": _local_time(form["end"], offset, "end"),
                "environments": form["environments"],
                "cpu": form["cpu"],
                "memory": form["memory"].strip(),
                "instructors": form["instructors"],
            }
            workshop = await self.create(body)
        except WorkshopError as err:
            await self._render(400, str(err), form)
            return
        self.redirect(f"{self.hub.base_url}workshops?created={workshop.name}", status=303)


class JoinPageHandler(WorkshopsMixin, BaseHandler):
    """Join a workshop: no account needed, the hub's login cookie afterwards."""

    async def _render(
        self, status: int = 200, error: str = "", code: str = "", name: str = ""
    ) -> None:
        html = await self.render_template(
            "workshop-join.html", error=error, code=code, chosen_name=name
        )
        self.set_status(status)
        self.finish(html)

    async def get(self) -> None:
        await self._render(code=self.get_argument("code", ""))

    async def post(self) -> None:
        code = normalize_code(self.get_argument("code", ""))
        typed = self.get_argument("name", "")
        workshop = self.store.by_code(code) if code else None
        try:
            if workshop is None:
                raise WorkshopError("There is no workshop with this code; check it and retry.")
            name = normalize_participant_name(typed)
            refusal = (
                "This workshop has ended."
                if workshop.name in self.store.ending
                else workshop.join_refusal(name, datetime.now(UTC))
            )
            if refusal:
                raise WorkshopError(refusal)
            user = admit(self, self.store, workshop, name)
        except WorkshopError as err:
            self.log.info("workshop join refused (code %r, name %r): %s", code, typed, err)
            await self._render(400, str(err), code, typed)
            return
        self.set_login_cookie(user)
        self.redirect(f"{self.hub.base_url}spawn", status=303)


def handlers(settings: WorkshopSettings) -> list[tuple[str, type, dict[str, Any]]]:
    """The routes, for ``c.JupyterHub.extra_handlers``."""
    kwargs = {"workshop_settings": settings}
    return [
        (r"/workshops", WorkshopsPageHandler, kwargs),
        (r"/workshop", JoinPageHandler, kwargs),
        (r"/api/workshops", WorkshopsAPIHandler, kwargs),
        (r"/api/workshops/([^/]+)", WorkshopAPIHandler, kwargs),
        (r"/api/workshops-check", WorkshopCheckHandler, kwargs),
    ]

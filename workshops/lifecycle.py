"""What a workshop does to the hub, run in the hub process by its handlers: the group of
its participants and the role of its instructors at creation; a participant's account at
joining; at the end, every participant's servers stopped and account deleted (with their
homes: ``DeskhubSpawner.delete_forever``), then the group and the role removed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from jupyterhub import orm, roles
from jupyterhub.utils import maybe_future

from .model import Workshop, WorkshopError, participant_username
from .store import WorkshopStore

log = logging.getLogger("JupyterHub.deskhub.workshops")


def instructor_scopes(workshop: str) -> list[str]:
    """What a workshop's instructors may do, all limited to its participants' group:
    see them in the admin page, read them and their servers, open their JupyterLab and
    desktop, and start or stop their servers."""
    group = f"group=workshop-{workshop}"
    return [
        "admin-ui",
        f"list:users!{group}",
        f"read:users!{group}",
        f"read:servers!{group}",
        f"servers!{group}",
        f"access:servers!{group}",
    ]


def instructor_role(workshop: Workshop) -> dict[str, Any]:
    """The workshop's instructor role, as ``c.JupyterHub.load_roles`` takes it."""
    return {
        "name": workshop.role,
        "description": f"Instructors of the workshop {workshop.name}",
        "scopes": instructor_scopes(workshop.name),
        "users": list(workshop.instructors),
    }


def create_hub_objects(handler: Any, workshop: Workshop) -> None:
    """The participants' group and the instructors' role (granted to the instructors)."""
    db = handler.db
    if orm.Group.find(db, workshop.group) is not None:
        raise WorkshopError(
            f"A group named {workshop.group} already exists; choose another workshop name."
        )
    if orm.Role.find(db, workshop.role) is not None:
        raise WorkshopError(
            f"A role named {workshop.role} already exists; choose another workshop name."
        )
    db.add(orm.Group(name=workshop.group))
    db.commit()
    spec = instructor_role(workshop)
    role = roles.create_role(db, {k: v for k, v in spec.items() if k != "users"})
    for name in workshop.instructors:
        user = handler.find_user(name)
        if user is not None:
            roles.grant_role(db, user.orm_user, role)


def name_taken(handler: Any, username: str) -> bool:
    """Whether a hub account, or a sign-up waiting for approval, has this name."""
    if handler.find_user(username) is not None:
        return True
    get_user = getattr(handler.authenticator, "get_user", None)  # NativeAuthenticator
    return bool(get_user and get_user(username) is not None)


def admit(handler: Any, store: WorkshopStore, workshop: Workshop, name: str) -> Any:
    """Make ``name`` a participant: the hub user, in the workshop's group. Synchronous
    from the check to the record, so two people never get the same name."""
    username = participant_username(workshop.name, name)
    if name_taken(handler, username):
        raise WorkshopError(
            f"The name {name!r} is already taken in this workshop; choose another one."
        )
    store.put(workshop.with_participant(name))
    user = handler.user_from_username(username)
    group = orm.Group.find(handler.db, workshop.group)
    if group is None:  # removed by hand: made again
        group = orm.Group(name=workshop.group)
        handler.db.add(group)
    if group not in user.orm_user.groups:
        user.orm_user.groups.append(group)
    handler.db.commit()
    log.info("%s joined workshop %s as %s", name, workshop.name, username)
    return user


async def _remove_now(spawner: Any) -> None:
    """Remove a session's container at once (``docker rm -f``), without the grace of a
    stop: its home is deleted right after, so nothing is left to save, and graceful stops,
    one after the other on each node's engine (up to 10 s each), would end a class of 40 in
    minutes. JupyterHub's stop then finds the server gone and only cleans up after it."""
    docker_call, container = getattr(spawner, "docker", None), getattr(spawner, "object_id", "")
    if docker_call is None or not container:
        return
    try:
        await docker_call("remove_container", container, force=True)
    except Exception as err:  # gone already, or its node down: the stop decides
        log.debug("removing %s's container failed: %s", spawner._log_name, err)


async def _stop_servers(handler: Any, user: Any) -> bool:
    """Stop every server of ``user``; False while one is still starting or stopping."""
    settled = True
    for server_name, spawner in list(user.spawners.items()):
        if spawner.pending:
            settled = False
            continue
        if spawner.active:
            await _remove_now(spawner)
            try:
                await handler.stop_single_user(user, server_name)
            except Exception as err:
                log.warning("stopping %s/%s failed: %s", user.name, server_name, err)
                settled = False
                continue
            if spawner._stop_pending:
                settled = False
    return settled


async def _delete_user(handler: Any, user: Any) -> None:
    await maybe_future(handler.authenticator.delete_user(user))
    await user.delete_spawners()  # DeskhubSpawner.delete_forever: the homes on every node
    handler.users.delete(user)


async def end_workshop(handler: Any, store: WorkshopStore, workshop: Workshop) -> bool:
    """End ``workshop``: True once everything is gone, False if a server was still
    starting or stopping (the next check carries on)."""
    store.ending.add(workshop.name)
    users = [u for u in map(handler.find_user, workshop.usernames()) if u is not None]
    stopped = await asyncio.gather(*(_stop_servers(handler, u) for u in users))
    remaining = 0
    for user, done in zip(users, stopped, strict=True):
        if not done:
            remaining += 1
            continue
        try:
            await _delete_user(handler, user)
        except Exception:
            log.exception("deleting %s of workshop %s failed", user.name, workshop.name)
            remaining += 1
    if remaining:
        log.info("workshop %s: %d participants still to remove", workshop.name, remaining)
        return False
    db = handler.db
    group = orm.Group.find(db, workshop.group)
    if group is not None:
        db.delete(group)
        db.commit()
    if orm.Role.find(db, workshop.role) is not None:
        roles.delete_role(db, workshop.role)
    store.remove(workshop.name)
    log.info(
        "workshop %s ended: %d participants' servers stopped and accounts deleted",
        workshop.name,
        len(users),
    )
    return True

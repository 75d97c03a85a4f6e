"""The CLI's access to blob storage (the stdlib REST client, off the event loop)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.layout import Layout

from .common import _CONNECT_TIMEOUT, _STORAGE_TIMEOUT, EXIT_USAGE, CliError, _close_quietly, blob_endpoint

if TYPE_CHECKING:
    from shared.blob_rest import BlobRestClient
    from shared.records import ExperimentDocument
    from shared.settings import CommonSettings
    from shared.state import ExperimentState, TrialRecord


class _Storage:
    """The CLI's access to the system of record: the stdlib REST client, off the event loop."""

    def __init__(self, settings: CommonSettings) -> None:
        from shared.blob_rest import BlobRestClient

        self.endpoint = blob_endpoint(settings.storage_connection_string)
        self.container_name = settings.storage_container
        try:
            self.client: BlobRestClient = BlobRestClient.from_connection_string(
                settings.storage_connection_string, settings.storage_container, timeout=_STORAGE_TIMEOUT
            )
        except ValueError as exc:
            raise CliError(f"TUNEBUS_STORAGE_CONNECTION_STRING: {exc}") from None

    async def open(self) -> _Storage:
        """Connect now: fail fast, in one line, when nothing answers (rather than at the upload),
        and set the connection up while the broker's is, off the path to publishing."""
        import asyncio

        try:
            await asyncio.to_thread(self.client.connect, _CONNECT_TIMEOUT)
        except OSError as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise CliError(f"cannot reach blob storage at {self.endpoint}: {reason}") from None
        return self

    async def close(self) -> None:
        self.client.close()

    def failure(self, exc: Exception) -> CliError:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return CliError(f"blob storage at {self.endpoint}: {first}")

    async def read_state(self, experiment_id: str) -> ExperimentState | None:
        import asyncio

        from shared.state import ExperimentState

        found = await asyncio.to_thread(self.client.get_json, Layout(experiment_id).state_doc)
        return None if found is None else ExperimentState.model_validate(found)

    async def read_full_state(self, experiment_id: str, *, last: int | None = None) -> ExperimentState | None:
        """The summary with every trial in it (the ended log's chunks read too: for ``trial ls``
        and the commands that look a trial up by id); with ``last``, only the active trials and
        the ``last`` to end (only the chunks that hold them are read)."""
        from shared import records

        state = await self.read_state(experiment_id)
        if state is None:
            return None
        chunks = range(records.chunk_count(state)) if last is None else records.chunks_for_last(state, last)
        ended = []
        for chunk in chunks:
            ended += await self._ended_chunk(experiment_id, chunk)
        if last is not None:
            ended = records.last_ended(state, ended, last)
            state = state.model_copy(update={"pending_ended": []})  # in ``ended`` when among the last
        return records.full_view(state, ended)

    async def _ended_chunk(self, experiment_id: str, chunk: int) -> list[TrialRecord]:
        import asyncio

        from shared import records

        path = Layout(experiment_id).ended_chunk(chunk)
        body = await asyncio.to_thread(self.client.get_blob, path)
        return [] if body is None else records.parse_chunk(body, path)

    async def read_blob(self, name: str) -> bytes | None:
        import asyncio

        return await asyncio.to_thread(self.client.get_blob, name)

    async def read_experiment_doc(self, experiment_id: str) -> ExperimentDocument | None:
        """``experiment.json`` (None before the dispatcher wrote it); CliError if it is not one."""
        import asyncio

        from pydantic import ValidationError

        from shared.records import ExperimentDocument

        found = await asyncio.to_thread(self.client.get_json, Layout(experiment_id).experiment_doc)
        if found is None:
            return None
        try:
            return ExperimentDocument.model_validate(found)
        except ValidationError as exc:
            raise CliError(f"experiment.json of {experiment_id} is not one: {str(exc)[:300]}") from None

    async def upload(self, name: str, data: bytes, content_type: str, *, create_only: bool = False) -> None:
        """Write a blob, creating the container first if the write finds none.

        ``create_only``: fail (BlobRestError, BlobAlreadyExists) rather than overwrite.
        """
        import asyncio

        from shared.blob_rest import BlobRestError

        try:
            await asyncio.to_thread(self.client.put_blob, name, data, content_type, create_only=create_only)
        except BlobRestError as exc:
            if exc.code != "ContainerNotFound":
                raise
            # Only a fresh deployment lacks it: one round trip saved on every other create.
            await asyncio.to_thread(self.client.ensure_container)
            await asyncio.to_thread(self.client.put_blob, name, data, content_type, create_only=create_only)

    async def exists(self, experiment_id: str) -> bool:
        """Whether anything was ever stored for the experiment (it may not be started yet)."""
        names = await self._list(Layout(experiment_id).root + "/", limit=1)
        return bool(names)

    async def experiment_ids(self) -> list[str]:
        """Every experiment folder in the container (one level listing, not every blob)."""
        names = await self._list("experiments/", delimiter="/")
        ids = (n.removeprefix("experiments/").rstrip("/") for n in names if n.endswith("/"))
        return sorted(i for i in ids if i)

    async def _list(self, prefix: str, delimiter: str | None = None, limit: int | None = None) -> list[str]:
        """Names under ``prefix``; none when the container does not exist yet."""
        import asyncio

        from shared.blob_rest import BlobRestError

        try:
            return await asyncio.to_thread(self.client.list_names, prefix, delimiter,
                                           page_size=limit, limit=limit)
        except BlobRestError as exc:
            if exc.status == 404:
                return []
            raise


def _run_with_storage(body: Any) -> Any:
    """Run ``body(storage)`` with storage opened and closed, mapping SDK errors to one line."""
    import asyncio

    from shared.settings import CommonSettings

    async def go() -> Any:
        storage = _Storage(CommonSettings())
        try:
            await storage.open()
            try:
                return await body(storage)
            except CliError:
                raise
            except Exception as exc:
                raise storage.failure(exc) from None
        finally:
            await _close_quietly(storage)

    return asyncio.run(go())


async def _state_or_unknown(storage: _Storage, experiment_id: str, *, full: bool = False,
                            last: int | None = None) -> ExperimentState | None:
    """The summary (``full``: with every trial, or the active ones and the ``last`` to end; the
    ended log read too); None if the experiment exists but has not started; CliError(2) if unknown."""
    state = await (storage.read_full_state(experiment_id, last=last) if full
                   else storage.read_state(experiment_id))
    if state is None and not await storage.exists(experiment_id):
        raise CliError(f"no experiment {experiment_id} in container "
                       f"{storage.container_name!r} at {storage.endpoint}", EXIT_USAGE)
    return state

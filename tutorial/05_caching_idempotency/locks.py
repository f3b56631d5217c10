import os
import uuid
from datetime import UTC, datetime, timedelta

import anyio
import pydantic_core
from prefect.locking.filesystem import FileSystemLockManager


class AtomicFileLockManager(FileSystemLockManager):
    """Prefect's FileSystemLockManager, but a lock file is never seen half written.

    Prefect 3.9.1 creates an empty lock file, then writes the holder into it. A run that
    reads the file in between, such as the second of two identical runs that start
    together, fails with "EOF while parsing a value". Here the lock is written to a file
    of its own first and then linked into place, so the lock file is absent or complete.
    """

    def acquire_lock(self, key, holder, acquire_timeout=None, hold_timeout=None) -> bool:
        self._ensure_lock_files_directory_exists()
        lock_path = self._lock_path_for_key(key)
        while True:
            if self.is_lock_holder(key, holder):
                return True
            if self.is_locked(key) and (
                acquire_timeout == 0 or not self.wait_for_lock(key, acquire_timeout)
            ):
                return False  # 0 means "do not wait", which Prefect's wait_for_lock ignores
            expiration = None
            if hold_timeout is not None:
                expires = datetime.now(UTC) + timedelta(seconds=hold_timeout)
                expiration = expires.isoformat()
            lock = {"holder": holder, "expiration": expiration}
            # region link
            staged = f"{lock_path}.{uuid.uuid4().hex}"  # a file of this attempt's own
            with open(staged, "xb") as staged_file:  # permissions as Prefect's lock files
                staged_file.write(pydantic_core.to_json(lock))
            try:
                os.link(staged, lock_path)  # fails if the lock file exists: never overwrites
                return True
            except FileExistsError:
                continue  # another run took the lock first: wait for it to be released
            finally:
                os.unlink(staged)
            # endregion link

    async def aacquire_lock(self, key, holder, acquire_timeout=None, hold_timeout=None) -> bool:
        # The async engine (async def tasks) calls this one; waiting happens in a thread.
        return await anyio.to_thread.run_sync(
            self.acquire_lock, key, holder, acquire_timeout, hold_timeout
        )

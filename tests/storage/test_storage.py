"""The storage contract, run unchanged against every backend: a local folder, S3 (s3fs against moto's
server mode over HTTP) and fsspec's memory filesystem."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from patchseek.errors import InvalidInputError, NotFoundError
from patchseek.indexer.blobs import BlobStore, sha256_hex
from patchseek.storage import LocalStorage, ObjectNotFoundError, Storage
from tests.storage.conftest import Backend


def _payload(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


class TestObjects:
    def test_put_get_info_exists(self, storage: Storage) -> None:
        before = time.time() - 5
        storage.put("a/b/one.bin", b"hello")
        assert storage.get("a/b/one.bin") == b"hello"
        assert storage.exists("a/b/one.bin") and not storage.exists("a/b/two.bin")
        info = storage.info("a/b/one.bin")
        assert info.size == 5 and before <= info.mtime <= time.time() + 5
        storage.put("a/b/one.bin", b"replaced")
        assert storage.get("a/b/one.bin") == b"replaced"

    def test_missing_objects_raise_not_found(self, storage: Storage) -> None:
        for call in (storage.get, storage.info, storage.local_path, storage.open):
            with pytest.raises(ObjectNotFoundError, match="nope/x") as err:
                call("nope/x")
            assert isinstance(err.value, NotFoundError) and isinstance(err.value, FileNotFoundError)
        storage.delete("nope/x")  # deleting a missing object is not an error

    @pytest.mark.parametrize("name", ["", "/abs", "a/../b", "a//b", ".hidden", "a/.tmp-x", "a\\b", "é"])
    def test_invalid_names_are_refused(self, storage: Storage, name: str) -> None:
        with pytest.raises(InvalidInputError, match="invalid storage object name"):
            storage.put(name, b"x")

    def test_list_by_prefix_and_delete(self, storage: Storage) -> None:
        for n in ("p/a", "p/b/c", "p/bc", "q/a", "pa"):
            storage.put(n, n.encode())
        assert list(storage.list("p/")) == ["p/a", "p/b/c", "p/bc"]
        assert list(storage.list("p/b")) == ["p/b/c", "p/bc"]
        assert list(storage.list("p")) == ["p/a", "p/b/c", "p/bc", "pa"]
        assert list(storage.list("nothing/")) == []
        storage.delete("p/b/c")
        assert list(storage.list("p/")) == ["p/a", "p/bc"]
        assert storage.delete_prefix("p/") == 2
        assert list(storage.list("")) == ["pa", "q/a"]

    def test_large_object_and_ranges(self, storage: Storage) -> None:
        data = _payload(24 << 20, 1)  # 24 MiB
        storage.put("big/blob", data)
        assert storage.info("big/blob").size == len(data)
        assert storage.get("big/blob") == data
        assert (
            storage.read_range("big/blob", 10 << 20, (10 << 20) + 4096) == data[10 << 20 : (10 << 20) + 4096]
        )
        with storage.open("big/blob") as f:
            f.seek(len(data) - 100)
            assert f.read() == data[-100:]
        with storage.local_path("big/blob") as local:
            assert local.path.stat().st_size == len(data) and local.path.read_bytes() == data


class TestAtomicity:
    def test_readers_never_see_a_partial_object(self, storage: Storage) -> None:
        """A reader racing a writer that replaces a 4 MiB object gets one whole version, never a mix."""
        versions = [_payload(4 << 20, s) for s in (2, 3)]
        storage.put("race/obj", versions[0])
        stop = threading.Event()
        errors: list[BaseException] = []

        def write() -> None:
            try:
                for i in range(8):
                    storage.put("race/obj", versions[(i + 1) % 2])
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                stop.set()

        t = threading.Thread(target=write)
        t.start()
        reads = 0
        while not stop.is_set() or reads < 3:
            got = storage.get("race/obj")
            assert got in versions, "a reader saw a partial or mixed object"
            reads += 1
        t.join()
        assert not errors

    def test_concurrent_puts_of_one_name_leave_one_whole_value(self, storage: Storage) -> None:
        payloads = [_payload(1 << 20, 10 + i) for i in range(6)]
        threads = [threading.Thread(target=storage.put, args=("same/key", p)) for p in payloads]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert storage.get("same/key") in payloads

    def test_exclusive_put_has_exactly_one_winner(self, storage: Storage) -> None:
        won: list[int] = []
        lost: list[int] = []
        barrier = threading.Barrier(6)

        def create(i: int) -> None:
            barrier.wait()
            try:
                storage.put("once/key", str(i).encode(), exclusive=True)
                won.append(i)
            except FileExistsError:
                lost.append(i)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(lost) == 5
        assert storage.get("once/key") == str(won[0]).encode()

    def test_a_failed_staged_write_leaves_nothing(self, storage: Storage) -> None:
        with pytest.raises(RuntimeError, match="crash"), storage.staged("st/obj") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
        assert not storage.exists("st/obj") and list(storage.list("st/")) == []
        with storage.staged("st/obj", exclusive=True) as tmp:
            tmp.write_bytes(b"whole")
        assert storage.get("st/obj") == b"whole"
        with pytest.raises(FileExistsError), storage.staged("st/obj", exclusive=True) as tmp:
            tmp.write_bytes(b"again")
        assert storage.get("st/obj") == b"whole"


class TestLocalPaths:
    def test_local_backend_gives_the_file_itself(self, tmp_path) -> None:  # type: ignore[no-untyped-def]
        store = LocalStorage(tmp_path)
        store.put("s/seg", b"abc")
        with store.local_path("s/seg") as f:
            assert f.path == tmp_path / "s" / "seg"

    def test_object_store_copies_are_cached_by_name_and_evicted_when_unused(self, backend: Backend) -> None:
        if backend.kind == "local":
            pytest.skip("the local backend maps its own files (identity, no cache)")
        store = backend.open(cache_bytes=3 << 20)
        cache = store.cache  # type: ignore[attr-defined]
        blobs = {f"seg/{i}": _payload(1 << 20, 20 + i) for i in range(5)}
        for name, data in blobs.items():
            store.put(name, data)
        # A miss downloads into <cache>/<name>; a hit serves the copy (segments are immutable): it
        # still works once the object is gone from the store.
        with store.local_path("seg/0") as f:
            assert f.path == cache.root / "seg" / "0" and f.path.read_bytes() == blobs["seg/0"]
        store.delete("seg/0")
        with store.local_path("seg/0") as f:
            assert f.path.read_bytes() == blobs["seg/0"]
        # Bounded: using 1..4 one after the other evicts the least recently used copies.
        for i in range(1, 5):
            with store.local_path(f"seg/{i}") as f:
                os.utime(f.path, (time.time() + i, time.time() + i))  # a strict LRU order
        assert cache.nbytes <= 3 << 20
        assert {n for n, _, _ in cache.entries()} == {"seg/2", "seg/3", "seg/4"}
        # Copies held open are never evicted, even over the bound; they go once released.
        held = [store.local_path(f"seg/{i}") for i in (1, 2, 3, 4)]
        assert cache.nbytes == 4 << 20 and all(h.path.exists() for h in held)
        for h in held:
            h.close()
        store.put("seg/5", b"x")
        with store.local_path("seg/5"):
            pass
        assert cache.nbytes <= 3 << 20

    def test_a_written_object_is_its_own_cached_copy(self, backend: Backend) -> None:
        if backend.kind == "local":
            pytest.skip("the local backend writes the file in place")
        store = backend.open()
        with store.staged("w/seg") as tmp:
            tmp.write_bytes(b"segment bytes")
        assert (store.cache.root / "w" / "seg").read_bytes() == b"segment bytes"  # type: ignore[attr-defined]
        other = backend.open()  # another node: an empty cache, the same store
        with other.local_path("w/seg") as f:
            assert f.path.read_bytes() == b"segment bytes"


class TestBlobStore:
    def test_put_get_keys_and_orphan_removal(self, storage: Storage) -> None:
        blobs = BlobStore(storage, "blobs/")
        keys = sorted(blobs.put(d) for d in (b"one", b"two", b"three"))
        assert keys == sorted(sha256_hex(d) for d in (b"one", b"two", b"three"))
        assert list(blobs.keys()) == keys
        assert blobs.get(keys[0]) in (b"one", b"two", b"three") and blobs.exists(keys[1])
        with pytest.raises(NotFoundError, match="not in the store"):
            blobs.get("0" * 64)
        with pytest.raises(InvalidInputError, match="invalid blob key"):
            blobs.get("../../etc/passwd")
        assert not blobs.remove_if_older(keys[0], time.time() - 3600)  # young: kept
        assert blobs.remove_if_older(keys[0], time.time() + 3600)
        assert list(blobs.keys()) == keys[1:]
        blobs.delete(keys[1])
        assert not blobs.exists(keys[1])

    def test_put_of_stored_bytes_refreshes_the_mtime(self, storage: Storage) -> None:
        blobs = BlobStore(storage, "blobs/")
        key = blobs.put(b"an upload nobody kept")
        first = storage.info(blobs.name(key)).mtime
        time.sleep(1.1)  # S3's Last-Modified has one-second resolution
        assert blobs.put(b"an upload nobody kept") == key
        assert storage.info(blobs.name(key)).mtime > first

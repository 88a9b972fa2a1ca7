"""Fair share between users with one real worker: alice queues 50 jobs, then bob queues 1; bob's job starts within
the next 2 claims, and every job still runs exactly once.

Uses the Redis at 127.0.0.1:6379 (its own key prefix) and the shared toy backend, slowed with delay_ms.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from studio.queue.testing import QueueHarness
from studio.users import UserStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REDIS_URL = "redis://127.0.0.1:6379/11"


def _sample(seed: int) -> dict:
    return {"op": "sample", "backend": "toy", "n": 1, "seed": seed, "options": {"delay_ms": 40}}


@pytest.mark.parametrize("stack", ["embedded", "server"])
def test_bob_starts_within_two_claims_after_alices_fifty(tmp_path: Path, stack: str) -> None:
    # no micro-batching: one job a claim
    harness = QueueHarness(tmp_path, broker_url=REDIS_URL, batch_max_images=1, stack=stack)
    try:
        with harness.active():
            users = UserStore.from_settings(harness.settings)
            users.add("alice", "alice-password")
            users.add("bob", "bob-password")
            harness.start_worker()
            client = harness.client()
            alice, bob = client.for_user("alice"), client.for_user("bob")
            alices = [alice.submit(_sample(i)) for i in range(50)]
            bobs = bob.submit(_sample(99))
            submitted = client.status(bobs)["created"]
            assert bob.wait(bobs, timeout=60)["state"] == "SUCCEEDED"
            for job_id in alices:  # all of them run: 51 jobs, each exactly once
                assert alice.wait(job_id, timeout=120)["state"] == "SUCCEEDED"
            jobs = [client.status(j) for j in [*alices, bobs]]
            started_after = sorted((j for j in jobs if j["started"] and j["started"] > submitted),
                                   key=lambda j: j["started"])
            order = [j["id"] for j in started_after]
            assert bobs in order[:2], f"bob's job was claim {order.index(bobs) + 1} after he queued it"
            assert all(j["attempts"] == 1 and j["state"] == "SUCCEEDED" for j in jobs)
            assert len(harness.trace_lines()) == len(jobs)  # each job decoded once: exactly once
            assert {j["owner"] for j in jobs} == {"alice", "bob"}
            client.close()
    finally:
        harness.close()


def test_priority_still_comes_before_fairness(tmp_path: Path) -> None:
    harness = QueueHarness(tmp_path, broker_url=REDIS_URL, batch_max_images=1)
    try:
        with harness.active():
            client = harness.client()
            alice, bob = client.for_user("alice"), client.for_user("bob")
            blocker = alice.submit({**_sample(0), "options": {"delay_ms": 300}})
            harness.start_worker()
            deadline = time.monotonic() + 30
            while client.status(blocker)["state"] == "QUEUED" and time.monotonic() < deadline:
                time.sleep(0.02)
            low = bob.submit(_sample(1), priority=1)
            high = alice.submit(_sample(2), priority=9)  # alice is running one, bob none: priority still wins
            for job_id in (blocker, low, high):
                assert client.wait(job_id, timeout=30)["state"] == "SUCCEEDED"
            assert client.status(high)["started"] < client.status(low)["started"]
            client.close()
    finally:
        harness.close()


def test_micro_batches_never_mix_users(tmp_path: Path) -> None:
    """alice and bob queue the same batchable spec before a worker starts: each user's jobs batch together, never
    with the other's (bob never sees alice's job id as his batch leader, in a message or an event)."""
    harness = QueueHarness(tmp_path, broker_url=REDIS_URL, batch_max_images=16)
    try:
        with harness.active():
            client = harness.client()
            alice, bob = client.for_user("alice"), client.for_user("bob")
            jobs = {"alice": [alice.submit(_sample(i)) for i in range(4)],
                    "bob": [bob.submit(_sample(10 + i)) for i in range(4)]}
            harness.start_worker()
            for owner, ids in jobs.items():
                for job_id in ids:
                    assert client.for_user(owner).wait(job_id, timeout=60)["state"] == "SUCCEEDED"
            batched = 0
            for owner, ids in jobs.items():
                others = set(jobs["bob" if owner == "alice" else "alice"])
                for job_id in ids:
                    job = client.status(job_id)
                    shown = " ".join([str(job["batch_leader"]), job["message"] or "",
                                      *(e["message"] or "" for e in job["events"])])
                    assert not any(other in shown for other in others), f"{owner}'s job shows {shown!r}"
                    batched += job["batch_leader"] is not None
            assert batched >= 2  # both users' jobs still share forward passes (with their own)
            client.close()
    finally:
        harness.close()


def test_a_failed_submit_keeps_a_job_that_already_started(tmp_path: Path) -> None:
    """With fair share a spare message can start a job before its own message is sent: if that send then fails,
    submit keeps the job (it runs) instead of deleting a RUNNING job's record."""
    harness = QueueHarness(tmp_path, broker_url=REDIS_URL)
    try:
        with harness.active():
            client = harness.client()
            app = client._celery()

            def send_fails_after_a_worker_claimed(name: str, args: list, **_: object) -> None:
                client.store.claim(args[0], "w/spare", "w", 30)  # what a worker's spare message does meanwhile
                raise ConnectionError("broker went away")

            app.send_task = send_fails_after_a_worker_claimed
            job_id = client.submit(_sample(1))
            job = client.status(job_id)
            assert job["state"] == "RUNNING" and job["worker"] == "w"

            def send_fails(name: str, args: list, **_: object) -> None:
                raise ConnectionError("broker went away")

            app.send_task = send_fails
            from studio.queue.broker import BrokerUnavailable

            with pytest.raises(BrokerUnavailable, match="could not queue"):
                client.submit(_sample(2))
            assert [j["id"] for j in client.store.list()] == [job_id]  # the queued one left nothing behind
            client.close()
    finally:
        harness.close()

"""Generation through the real ollama client against the loopback double: what the user would see."""

from __future__ import annotations

import asyncio

import pytest

from core.errors import DiskBudgetExceeded, ModelUnavailable, OllamaUnavailable, StreamFailed
from core.generation import Done, Fallback, Generator, GenEvent, Pulling, Queued, Retrying, Started, Token
from core.inventory import InventoryService
from core.types import Decision, Turn
from tests.doubles.ollama import OllamaDouble


def decision(model: str, *alternatives: str, download: bool = True) -> Decision:
    return Decision(
        recommended_model=model,
        confidence=0.9,
        reasoning="test",
        query_type="general",
        complexity="simple",
        alternatives=list(alternatives),
        download_if_needed=download,
        source="local",
    )


def ask(text: str = "What is a monad?") -> list[Turn]:
    return [Turn(role="user", content=text, author="Alice")]


class Harness:
    def __init__(self, settings, store_events=None) -> None:
        self.inventory = InventoryService(settings, settings.hosts)
        self.events: list[tuple[str, str, str, str]] = []

        async def record(model: str, host: str, kind: str, detail: str) -> None:
            self.events.append((model, host, kind, detail))

        self.generator = Generator(settings, self.inventory, store_events=store_events or record)

    async def run(self, dec: Decision, turns: list[Turn], **kw) -> list[GenEvent]:
        return [e async for e in self.generator.stream(dec, turns, **kw)]

    async def close(self) -> None:
        await self.generator.aclose()
        await self.inventory.aclose()


@pytest.fixture
async def harness(make_settings):
    made: list[Harness] = []

    def make(*hosts: OllamaDouble, **overrides) -> Harness:
        h = Harness(make_settings(ollama_hosts=[d.url for d in hosts], **overrides))
        made.append(h)
        return h

    yield make
    for h in made:
        await h.close()


def text_of(events: list[GenEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, Token))


async def test_a_missing_model_is_pulled_with_progress_then_answers(
    ollama_double: OllamaDouble, harness
) -> None:
    ollama_double.add_pullable("qwen2.5-coder:7b", 4.68)
    ollama_double.reply = "Use a base case."
    h = harness(ollama_double)

    events = await h.run(decision("qwen2.5-coder:7b"), ask("Why does my recursion never stop?"))

    pulls = [e for e in events if isinstance(e, Pulling)]
    assert pulls[0].status == "pulling manifest" and pulls[-1].status == "success"
    percents = [p.percent for p in pulls if p.percent is not None]
    assert percents == sorted(percents) and percents[-1] == 100.0
    started = next(e for e in events if isinstance(e, Started))
    assert started.model == "qwen2.5-coder:7b" and started.host == ollama_double.url
    assert text_of(events) == "Use a base case."
    done = events[-1]
    assert isinstance(done, Done) and done.completion_tokens == 4 and done.tokens_per_s
    assert (await h.inventory.snapshot()).get("qwen2.5-coder:7b").local
    assert ("qwen2.5-coder:7b", ollama_double.url, "pull", "pulled") in h.events


async def test_a_failed_pull_falls_back_to_the_alternative(ollama_double: OllamaDouble, harness) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.reply = "Answer from llama."
    h = harness(ollama_double)

    events = await h.run(decision("phi4:14b", "llama3.2:3b"), ask())  # phi4 is not in the registry

    fallback = next(e for e in events if isinstance(e, Fallback))
    assert (fallback.from_model, fallback.to_model) == ("phi4:14b", "llama3.2:3b")
    assert "file does not exist" in fallback.reason
    assert text_of(events) == "Answer from llama."
    assert [c.body["model"] for c in ollama_double.calls("/api/chat")] == ["llama3.2:3b"]
    assert any(kind == "pull_failed" for _, _, kind, _ in h.events)


async def test_without_download_permission_a_remote_model_is_skipped(
    ollama_double: OllamaDouble, harness
) -> None:
    ollama_double.add_model("llama3.2:1b", size_gb=1.3)
    ollama_double.add_pullable("gemma2:9b", 5.4)
    h = harness(ollama_double)

    events = await h.run(decision("gemma2:9b", "llama3.2:1b", download=False), ask())

    assert ollama_double.calls("/api/pull") == []
    assert next(e for e in events if isinstance(e, Started)).model == "llama3.2:1b"


async def test_an_uncatalogued_local_model_can_answer(ollama_double: OllamaDouble, harness) -> None:
    ollama_double.add_model("team-coder:latest", size_gb=3.0)
    ollama_double.reply = "Our own model here."
    h = harness(ollama_double)

    events = await h.run(decision("team-coder"), ask())

    assert text_of(events) == "Our own model here."
    assert ollama_double.calls("/api/chat")[0].body["model"] == "team-coder:latest"


async def test_a_pull_beyond_the_disk_budget_is_refused(ollama_double: OllamaDouble, harness) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.add_pullable("qwen2.5-coder:7b", 4.68)
    h = harness(ollama_double, disk_budget_gb=5)

    with pytest.raises(DiskBudgetExceeded) as caught:
        await h.run(decision("qwen2.5-coder:7b"), ask())

    msg = caught.value.user_message
    assert "qwen2.5-coder:7b (4.7 GB)" in msg and "disk budget of 5 GB" in msg
    assert "METAROUTER_DISK_BUDGET_GB" in msg
    assert ollama_double.calls("/api/pull") == []

    with pytest.raises(DiskBudgetExceeded):  # the admin path refuses the same way
        [p async for p in h.generator.pull("qwen2.5-coder:7b")]


async def test_no_ollama_server_gives_a_clear_error(ollama_double: OllamaDouble, harness) -> None:
    h = harness(ollama_double)
    await ollama_double.stop()

    with pytest.raises(OllamaUnavailable) as caught:
        await h.run(decision("llama3.2:3b"), ask())

    assert ollama_double.url in caught.value.user_message
    assert "OLLAMA_HOST" in caught.value.user_message
    with pytest.raises(OllamaUnavailable):
        [p async for p in h.generator.pull("llama3.2:3b")]


async def test_a_server_that_dies_after_the_inventory_gives_ollama_unavailable(
    ollama_double: OllamaDouble, harness
) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    h = harness(ollama_double)
    await h.inventory.snapshot()  # cached while the server was still up
    await ollama_double.stop()

    with pytest.raises(OllamaUnavailable):
        await h.run(decision("llama3.2:3b"), ask())


async def test_every_candidate_failing_raises_one_generation_error(
    ollama_double: OllamaDouble, harness
) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.fail("/api/chat", 500, "llama runner process has terminated: exit status 2")
    h = harness(ollama_double)

    with pytest.raises(ModelUnavailable) as caught:
        await h.run(decision("llama3.2:3b", "gemma2:2b", download=False), ask())

    assert "exit status 2" in caught.value.user_message and "gemma2:2b" in caught.value.user_message


async def test_history_reaches_ollama_in_order_with_roles_and_names(
    ollama_double: OllamaDouble, harness
) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    h = harness(ollama_double)
    turns = [
        Turn(role="user", content="Shall we use Postgres?", author="Alice"),
        Turn(role="assistant", content="Postgres fits your load."),
        Turn(role="user", content="And for the cache?", author="Bob"),
    ]

    events = await h.run(decision("llama3.2:3b"), turns, system_prompt="Be brief.")

    sent = ollama_double.calls("/api/chat")[0].body["messages"]
    assert sent == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Alice: Shall we use Postgres?"},
        {"role": "assistant", "content": "Postgres fits your load."},
        {"role": "user", "content": "Bob: And for the cache?"},
    ]
    assert next(e for e in events if isinstance(e, Started)).trimmed is False


async def test_a_long_history_is_trimmed_oldest_first_keeping_the_question(
    ollama_double: OllamaDouble, harness
) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    h = harness(ollama_double, default_context_tokens=512)
    history = [Turn(role="user", content=f"message {i}: " + "x" * 300, author="Alice") for i in range(12)]
    question = Turn(role="user", content="So what is the answer?", author="Bob")

    events = await h.run(decision("llama3.2:3b"), [*history, question], system_prompt="Be brief.")

    sent = ollama_double.calls("/api/chat")[0].body["messages"]
    assert sent[0]["role"] == "system" and sent[-1]["content"] == "Bob: So what is the answer?"
    kept = [m["content"].split(":")[1] for m in sent[1:-1]]
    assert 0 < len(kept) < 12
    assert kept == [f" message {i}" for i in range(12 - len(kept), 12)]  # the newest ones, in order
    assert sum(len(m["content"]) for m in sent) // 4 <= 512 * 0.75
    assert next(e for e in events if isinstance(e, Started)).trimmed is True


async def test_an_enormous_question_is_cut_but_still_sent(ollama_double: OllamaDouble, harness) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    h = harness(ollama_double, default_context_tokens=512)
    question = "START " + "y" * 20_000 + " END?"

    events = await h.run(decision("llama3.2:3b"), [Turn(role="assistant", content="earlier"), *ask(question)])

    sent = ollama_double.calls("/api/chat")[0].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user"]
    assert sent[-1]["content"].startswith("Alice: START") and sent[-1]["content"].endswith("END?")
    assert len(sent[-1]["content"]) < 2_000
    assert next(e for e in events if isinstance(e, Started)).trimmed is True


async def test_requests_beyond_the_host_limit_queue(ollama_double: OllamaDouble, harness) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.reply = "one two three four"
    ollama_double.token_delay = 0.03
    h = harness(ollama_double, per_host_concurrency=2)

    results = await asyncio.gather(*(h.run(decision("llama3.2:3b"), ask()) for _ in range(5)))

    assert ollama_double.max_concurrent_chats == 2
    assert all(text_of(events) == "one two three four" for events in results)
    queued = [e for events in results for e in events if isinstance(e, Queued)]
    assert queued and {q.host for q in queued} == {ollama_double.url}
    assert max(q.position for q in queued) == 3  # three waited behind the two running
    assert sum(1 for events in results if any(isinstance(e, Queued) for e in events)) == 3


async def test_an_error_mid_stream_is_answered_again_then_keeps_the_partial_answer(
    ollama_double: OllamaDouble, harness
) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.add_model("gemma2:2b", size_gb=1.6)
    ollama_double.reply = "The answer is forty two."
    ollama_double.error_after_tokens = 2
    h = harness(ollama_double)
    seen: list[GenEvent] = []

    with pytest.raises(StreamFailed) as caught:
        async for event in h.generator.stream(decision("llama3.2:3b", "gemma2:2b"), ask()):
            seen.append(event)

    # the alternative takes over from the start (this host is up: only llama3.2 broke on it) and
    # breaks the same way; the partial answers stay, and the error says no one could take over
    retry = next(e for e in seen if isinstance(e, Retrying))
    assert (retry.model, retry.host) == ("llama3.2:3b", ollama_double.url)
    assert [e.model for e in seen if isinstance(e, Started)] == ["llama3.2:3b", "gemma2:2b"]
    assert text_of(seen) == "The answer The answer "
    assert "exit status 2" in str(caught.value) and "Mention me again" in caught.value.user_message
    assert len(ollama_double.calls("/api/chat")) == 2


async def test_a_failure_before_the_first_token_falls_back(ollama_double: OllamaDouble, harness) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.add_model("gemma2:2b", size_gb=1.6)
    ollama_double.fail("/api/chat", 500, "out of memory", times=1)
    h = harness(ollama_double)

    events = await h.run(decision("llama3.2:3b", "gemma2:2b"), ask())

    assert [type(e) for e in events if not isinstance(e, Token)] == [Fallback, Started, Done]
    assert events[0].reason == "out of memory"
    assert next(e for e in events if isinstance(e, Started)).model == "gemma2:2b"


async def test_a_model_removed_behind_the_inventorys_back_falls_back(
    ollama_double: OllamaDouble, harness
) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.add_model("gemma2:2b", size_gb=1.6)
    h = harness(ollama_double, inventory_ttl_s=3600)
    await h.inventory.snapshot()
    del ollama_double.models["llama3.2:3b"]  # `ollama rm` by someone else

    events = await h.run(decision("llama3.2:3b", "gemma2:2b", download=False), ask())

    assert "not found" in next(e for e in events if isinstance(e, Fallback)).reason
    assert not (await h.inventory.snapshot()).get("llama3.2:3b").local  # the stale snapshot was dropped


async def test_a_stall_beyond_the_idle_timeout_fails(ollama_double: OllamaDouble, harness) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.reply = "Thinking about it ..."
    ollama_double.stall_after_tokens = 1
    h = harness(ollama_double, stream_idle_timeout_s=0.3)
    seen: list[GenEvent] = []

    with pytest.raises(StreamFailed, match="no output for 0.3 s"):
        async for event in h.generator.stream(decision("llama3.2:3b"), ask()):
            seen.append(event)

    assert text_of(seen) == "Thinking "


async def test_a_slow_but_steady_stream_outlasts_the_idle_timeout(
    ollama_double: OllamaDouble, harness
) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.reply = "a b c d e f g h"
    ollama_double.token_delay = 0.1  # 0.8 s in all, never 0.3 s of silence
    h = harness(ollama_double, stream_idle_timeout_s=0.3)

    events = await h.run(decision("llama3.2:3b"), ask())

    assert text_of(events) == "a b c d e f g h" and isinstance(events[-1], Done)


async def test_the_host_that_has_the_model_loaded_is_preferred(ollama_factory, harness) -> None:
    cold: OllamaDouble = await ollama_factory(reply="cold")
    warm: OllamaDouble = await ollama_factory(reply="warm")
    cold.add_model("llama3.2:3b", size_gb=2.0)
    warm.add_model("llama3.2:3b", size_gb=2.0, loaded=True)
    h = harness(cold, warm)

    events = await h.run(decision("llama3.2:3b"), ask())

    assert text_of(events) == "warm" and cold.calls("/api/chat") == []


async def test_a_pull_goes_to_the_host_with_the_most_budget_left(ollama_factory, harness) -> None:
    full: OllamaDouble = await ollama_factory()
    roomy: OllamaDouble = await ollama_factory()
    full.add_model("phi4:14b", size_gb=9.1)
    for d in (full, roomy):
        d.add_pullable("llama3.2:1b", 1.3)
    h = harness(full, roomy, disk_budget_gb=10)

    events = await h.run(decision("llama3.2:1b"), ask())

    assert next(e for e in events if isinstance(e, Started)).host == roomy.url
    assert full.calls("/api/pull") == [] and "llama3.2:1b" not in full.models


async def test_admin_pull_and_remove(ollama_double: OllamaDouble, harness) -> None:
    ollama_double.add_pullable("mathstral:7b", 4.1)
    h = harness(ollama_double)

    progress = [p async for p in h.generator.pull("mathstral:7b")]
    assert progress[-1].status == "success"
    assert (await h.inventory.snapshot()).get("mathstral:7b").hosts == (ollama_double.url,)

    assert await h.generator.remove("mathstral:7b") == [ollama_double.url]
    assert not (await h.inventory.snapshot()).get("mathstral:7b").local
    assert [k for _, _, k, _ in h.events] == ["pull", "remove"]
    with pytest.raises(ModelUnavailable):
        await h.generator.remove("mathstral:7b")
    with pytest.raises(ModelUnavailable, match="file does not exist"):
        [p async for p in h.generator.pull("nonexistent:1b")]


async def test_a_failing_event_store_never_breaks_an_answer(
    ollama_double: OllamaDouble, make_settings
) -> None:
    async def broken(*args: str) -> None:
        raise ConnectionError("database down")

    ollama_double.add_pullable("llama3.2:1b", 1.3)
    h = Harness(make_settings(ollama_host=ollama_double.url), store_events=broken)

    events = await h.run(decision("llama3.2:1b"), ask())

    assert isinstance(events[-1], Done)
    await h.close()


async def test_an_abandoned_answer_frees_its_slot(ollama_double: OllamaDouble, harness) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    ollama_double.reply = "a long answer nobody waits for"
    ollama_double.token_delay = 0.02
    h = harness(ollama_double, per_host_concurrency=1)

    stream = h.generator.stream(decision("llama3.2:3b"), ask())
    async for event in stream:
        if isinstance(event, Token):
            break  # the user deleted the question: the adapter stops reading
    await stream.aclose()
    ollama_double.reply = "next"
    events = await h.run(decision("llama3.2:3b"), ask())

    assert text_of(events) == "next" and not any(isinstance(e, Queued) for e in events)


async def test_a_pull_that_goes_silent_falls_back(ollama_double: OllamaDouble, harness) -> None:
    ollama_double.add_pullable("gemma2:9b", 5.4)
    ollama_double.add_model("gemma2:2b", size_gb=1.6)
    ollama_double.pull_delay = 1.0
    h = harness(ollama_double, pull_idle_timeout_s=0.2)

    events = await h.run(decision("gemma2:9b", "gemma2:2b"), ask())

    fallback = next(e for e in events if isinstance(e, Fallback))
    assert fallback.reason == "pull failed: the pull sent nothing for 0.2 s"
    assert next(e for e in events if isinstance(e, Started)).model == "gemma2:2b"


async def test_a_restarted_ollama_is_used_without_waiting_for_the_cache(
    ollama_double: OllamaDouble, harness
) -> None:
    ollama_double.add_model("llama3.2:3b", size_gb=2.0)
    h = harness(ollama_double, inventory_ttl_s=3600)
    await ollama_double.stop()
    assert (await h.inventory.snapshot()).hosts_down == (ollama_double.url,)
    await ollama_double.start()  # same port

    events = await h.run(decision("llama3.2:3b"), ask())

    assert isinstance(events[-1], Done)

import asyncio
from contextlib import closing

import httpx
import openai
import pytest

from kollm.store import connect

DIALOGUE = "#Person1#: 안녕하세요, 치과 예약을 하고 싶은데요.\n#Person2#: 네, 어디가 불편하신가요?"


def client(server, key="none") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)


# the request log on both stores; the second engine on SQLite alone (it logs the same way)
@pytest.mark.parametrize(
    ("engine", "store_backend"),
    [("ctranslate2", "sqlite"), ("ctranslate2", "postgresql"), ("transformers", "sqlite")],
    indirect=["store_backend"],
)
def test_chat_and_korean_streaming_match(served_store, start_server, engine, served_home):
    server = start_server(engine=engine)
    api = client(server)
    messages = [
        {"role": "user", "content": DIALOGUE + "\n#Person1#: 제 번호는 010-1234-5678이에요."}
    ]
    reply = api.chat.completions.create(
        model="tiny", messages=messages, max_tokens=24, temperature=0
    )
    answer = reply.choices[0].message.content
    assert reply.id.startswith("chatcmpl-") and reply.model_extra["model_version"] == "tiny:1"
    assert reply.usage.completion_tokens > 0 and reply.choices[0].finish_reason in (
        "stop",
        "length",
    )
    chunks = list(
        api.chat.completions.create(
            model="tiny", messages=messages, max_tokens=24, temperature=0, stream=True
        )
    )
    pieces = [c.choices[0].delta.content or "" for c in chunks]
    assert "".join(pieces) == answer
    assert all("\ufffd" not in piece for piece in pieces)
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason
    # The request log holds the answer and the version, with the phone number masked.
    with closing(connect(served_home / "registry.db")) as conn:
        row = conn.execute(
            "SELECT model_version, request, response FROM responses WHERE id = ?", (reply.id,)
        ).fetchone()
    assert row[0] == "tiny:1" and row[2] == answer
    assert "010-1234-5678" not in row[1] and "#PhoneNumber#" in row[1]


def test_models_completions_embeddings_and_metrics(start_server):
    server = start_server(engine="transformers")
    api = client(server)
    listed = api.models.list().data  # the model, then its task services as tiny/TASK
    assert [m.id for m in listed if not m.model_extra.get("task")] == ["tiny"]
    completion = api.completions.create(
        model="tiny",
        prompt="다음 대화를 요약하세요.\n" + DIALOGUE + "\n요약:",
        max_tokens=10,
        temperature=0,
    )
    assert completion.choices[0].text
    stream = list(
        api.completions.create(
            model="tiny",
            prompt="다음 대화를 요약하세요.\n" + DIALOGUE + "\n요약:",
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == completion.choices[0].text
    assert stream[-1].usage.completion_tokens == completion.usage.completion_tokens
    vectors = api.embeddings.create(model="tiny", input=["안녕하세요", "택배가 안 왔어요"]).data
    assert len(vectors) == 2 and len(vectors[0].embedding) == 32
    assert abs(sum(x * x for x in vectors[0].embedding) - 1) < 1e-4
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'kollm:e2e_request_latency_seconds_count{model_name="tiny"}' in metrics
    assert 'kollm:generation_tokens_total{model_name="tiny"}' in metrics


def test_errors_in_openai_shape(start_server):
    server = start_server(api_keys=["secret"])
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong").chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "a"}]
        )
    api = client(server, "secret")
    with pytest.raises(openai.NotFoundError) as err:
        api.chat.completions.create(model="nope", messages=[{"role": "user", "content": "안녕"}])
    assert err.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "안녕"}], temperature=5
        )
    assert err.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as err:  # vLLM's 400, with the token counts
        api.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "가나다 " * 400}], max_tokens=8
        )
    message, context = (
        err.value.body["message"],
        server.manager.models["tiny"].engine.context_length,
    )
    assert f"maximum context length is {context} tokens" in message
    assert "in the messages, 8 in the completion" in message
    bad = httpx.post(
        server.base_url + "/v1/chat/completions",
        headers={"Authorization": "Bearer secret"},
        json={"model": "tiny"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"


def test_a_burst_beyond_the_queue_gets_429_and_the_rest_completes(start_server):
    server = start_server(max_batch=2, max_queue=2)

    async def burst():
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
            body = {
                "model": "tiny",
                "messages": [{"role": "user", "content": DIALOGUE}],
                "max_tokens": 30,
                "temperature": 0,
            }
            return await asyncio.gather(
                *(http.post("/v1/chat/completions", json=body) for _ in range(16))
            )

    replies = asyncio.run(burst())
    codes = [r.status_code for r in replies]
    assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
    assert all(r.headers["retry-after"] == "1" for r in replies if r.status_code == 429)
    answers = {
        r.json()["choices"][0]["message"]["content"] for r in replies if r.status_code == 200
    }
    alone = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": DIALOGUE}],
            "max_tokens": 30,
            "temperature": 0,
        },
        timeout=60,
    ).json()["choices"][0]["message"]["content"]
    assert answers == {alone}  # batched or not, greedy decoding gives every request one answer
    assert codes.count(200) >= 2  # the batch and the queue were served


def test_a_client_that_leaves_frees_its_place(start_server):
    import time

    server = start_server(max_batch=1, max_queue=1)
    engine = server.manager.models["tiny"].engine
    slow_generate = engine.generate

    def slow(*args, **kwargs):
        time.sleep(1.5)
        return slow_generate(*args, **kwargs)

    engine.generate = slow
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": DIALOGUE}],
        "max_tokens": 5,
        "temperature": 0,
    }

    async def scenario():
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            running = asyncio.create_task(http.post("/v1/chat/completions", json=body))
            await asyncio.sleep(0.3)  # `running` is in the engine now
            async with httpx.AsyncClient(base_url=server.base_url, timeout=0.5) as impatient:
                with pytest.raises(httpx.ReadTimeout):
                    await impatient.post("/v1/chat/completions", json=body)  # waits, then leaves
            await asyncio.sleep(0.6)  # the server notices the disconnect
            later = await http.post("/v1/chat/completions", json=body)
            return (await running).status_code, later.status_code

    assert asyncio.run(scenario()) == (200, 200)


def test_health_is_503_until_models_load(start_server, tmp_path):
    server = start_server(refs=["missing@production"], wait_ready=False)
    import time

    time.sleep(0.5)
    health = httpx.get(server.base_url + "/health")
    assert health.status_code == 503 and "missing" in health.json()["reason"]
    assert httpx.get(server.base_url + "/v1/models").status_code == 503


def test_domain_guard_declines_off_domain_requests(start_server):
    from kollm.serve.service import DomainGuard

    server = start_server(guards={"tiny": DomainGuard(["예약", "민원"])})
    api = client(server)
    on = api.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": DIALOGUE}], max_tokens=8
    )
    off = api.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "주식 추천해 줘"}]
    )
    assert off.choices[0].message.content == DomainGuard([]).refusal
    assert on.choices[0].message.content != off.choices[0].message.content
    assert (
        'kollm:requests_off_domain_total{model_name="tiny"} 1.0'
        in httpx.get(server.base_url + "/metrics").text
    )


@pytest.mark.usefixtures("served_store")
def test_request_log_can_be_switched_off(start_server, served_home):
    server = start_server(log_requests=False)
    reply = client(server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "안녕"}], max_tokens=4
    )
    with closing(connect(served_home / "registry.db")) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM responses WHERE id = ?", (reply.id,)).fetchone()[
            0
        ]
    assert rows == 0


def test_shutdown_finishes_the_requests_in_flight(start_server):
    import time

    server = start_server()
    engine = server.manager.models["tiny"].engine
    generate = engine.generate

    def slow(*args, **kwargs):
        time.sleep(1.0)
        return generate(*args, **kwargs)

    engine.generate = slow
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": DIALOGUE}],
        "max_tokens": 5,
        "temperature": 0,
    }

    async def scenario():
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            in_flight = asyncio.create_task(http.post("/v1/chat/completions", json=body))
            await asyncio.sleep(0.3)
            server.server.should_exit = True  # as on SIGTERM
            return await in_flight

    expected = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=30).json()
    reply = asyncio.run(scenario())
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"] == expected["choices"][0]["message"]
    assert reply.json()["usage"]["completion_tokens"] == expected["usage"]["completion_tokens"]

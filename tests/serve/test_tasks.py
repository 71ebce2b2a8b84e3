"""Task services over HTTP: `MODEL/TASK` (or a `task` field) puts the task's system prompt and
template around the request with its decoding settings (the request's own win), the tasks a
version was registered with are served and listed in /v1/models, a task's domain guard
declines what the model alone would answer, qa refuses to answer without documents, and the
console's playground picks tasks."""

from __future__ import annotations

import json
import sqlite3

import httpx
import openai
import pytest

from kollm.config import RecipeError, TaskConfig, load_recipe
from kollm.rag.index import RagIndex
from kollm.registry import Registry
from kollm.tasks import SHIPPED, recorded_tasks, task_messages
from tests.serve.test_console import _login

REFUSAL = "민원 업무에 관한 질문에만 답합니다."
RECIPE = f"""
name: civil
serve:
  tasks:
    brief:
      description: 한 줄 답변
      system: 한 줄로 답하세요.
      template: "질문: {{input}}"
      temperature: 0
      max_tokens: 3
    minwon:
      system: 당신은 구청 민원 상담원입니다.
      domain:
        keywords: [민원, 전입]
        refusal: {REFUSAL}
"""


@pytest.fixture(scope="module")
def civil_home(tmp_path_factory, qwen2_chat_base):
    """A registry with `civil`, a chat-template model registered from a recipe with tasks."""
    home = tmp_path_factory.mktemp("tasks-home")
    Registry(home).register("civil", qwen2_chat_base, recipe_text=RECIPE)
    return home


@pytest.fixture
def civil(start_server, civil_home):
    return start_server(refs=["civil"], engine="transformers", registry_home=civil_home)


def _api(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)


def _ask(server, model, text, **options):
    messages = [{"role": "user", "content": text}]
    return _api(server).chat.completions.create(model=model, messages=messages, **options)


def _logged(home, response_id) -> dict:
    with sqlite3.connect(home / "registry.db") as conn:
        row = conn.execute("SELECT request FROM responses WHERE id = ?", (response_id,)).fetchone()
    return json.loads(row[0])


def _prompt_tokens(server, messages) -> int:
    body = {"model": "civil", "messages": messages}
    return httpx.post(server.base_url + "/tokenize", json=body).json()["count"]


def test_summarise_task_puts_its_prompt_around_the_request(civil, civil_home):
    text = "구청은 다음 주 월요일부터 민원실 운영 시간을 오후 여덟 시까지 늘립니다."
    plain = _ask(civil, "civil", text, max_tokens=2, temperature=0)
    reply = _ask(civil, "civil/summarise", text, max_tokens=2)
    task = SHIPPED["summarise"]
    expected = [
        {"role": "system", "content": task.system},
        {"role": "user", "content": task.template.format(input=text)},
    ]
    assert reply.usage.prompt_tokens == _prompt_tokens(civil, expected)
    assert plain.usage.prompt_tokens == _prompt_tokens(civil, [{"role": "user", "content": text}])
    assert reply.usage.prompt_tokens > plain.usage.prompt_tokens
    counted = httpx.post(  # /tokenize counts a task's prompt as the chat builds it
        civil.base_url + "/tokenize",
        json={"model": "civil/summarise", "messages": [{"role": "user", "content": text}]},
    )
    assert counted.json()["count"] == reply.usage.prompt_tokens
    assert reply.model == "civil/summarise" and reply.model_extra["task"] == "summarise"
    assert "task" not in plain.model_extra
    logged = _logged(civil_home, reply.id)  # the log keeps what the user sent, and the task
    sent = logged["messages"][0]["content"]  # as the user sent it (PII-masked), untemplated
    assert logged["task"] == "summarise" and sent.startswith("구청은") and "요약" not in sent
    assert logged["temperature"] == 0  # the task's, as the request set none


def test_decoding_defaults_apply_and_the_request_overrides_them(civil, civil_home):
    by_id = _ask(civil, "civil/brief", "전입신고는 어디서 하나요?")
    assert by_id.usage.completion_tokens <= 3
    logged = _logged(civil_home, by_id.id)
    assert (logged["max_tokens"], logged["temperature"]) == (3, 0)
    by_field = _ask(
        civil, "civil", "전입신고는 어디서 하나요?", max_tokens=5, extra_body={"task": "brief"}
    )
    logged = _logged(civil_home, by_field.id)
    assert logged["task"] == "brief" and (logged["max_tokens"], logged["temperature"]) == (5, 0)
    assert by_field.usage.prompt_tokens == by_id.usage.prompt_tokens  # the same task prompt


def test_models_lists_shipped_and_recorded_tasks(civil):
    cards = {m.id: m for m in _api(civil).models.list().data}
    shipped = {f"civil/{name}" for name in SHIPPED}
    assert {"civil", "civil/brief", "civil/minwon"} | shipped == set(cards)
    assert cards["civil/brief"].model_extra["task"] == "brief"
    assert cards["civil/brief"].model_extra["description"] == "한 줄 답변"
    assert cards["civil/qa"].model_extra["root"] == "civil"


def test_the_serving_recipe_replaces_a_recorded_task(start_server, civil_home):
    tasks = {"brief": TaskConfig(template="요약: {input}", max_tokens=1)}
    server = start_server(
        refs=["civil"], engine="transformers", registry_home=civil_home, tasks=tasks
    )
    reply = _ask(server, "civil/brief", "전입신고")
    assert reply.usage.completion_tokens <= 1
    expected = [{"role": "user", "content": "요약: 전입신고"}]
    assert reply.usage.prompt_tokens == _prompt_tokens(server, expected)


def test_unknown_or_conflicting_tasks_are_refused_by_name(civil):
    api = _api(civil)
    with pytest.raises(openai.NotFoundError) as unknown:
        _ask(civil, "civil/poetry", "시를 써 줘")
    assert unknown.value.body["param"] == "task" and "poetry" in unknown.value.body["message"]
    with pytest.raises(openai.NotFoundError) as no_model:
        _ask(civil, "nobody/summarise", "안녕")
    assert no_model.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as conflict:
        _ask(civil, "civil/summarise", "안녕", extra_body={"task": "code"})
    assert conflict.value.body["param"] == "task" and "code" in conflict.value.body["message"]
    with pytest.raises(openai.BadRequestError) as completion:
        api.completions.create(model="civil/summarise", prompt="안녕", max_tokens=2)
    assert completion.value.body["param"] == "task"
    assert "chat" in completion.value.body["message"]


def test_a_task_domain_guard_declines_what_the_model_alone_answers(civil):
    off = "오늘 저녁 메뉴 추천해 줘"
    assert _ask(civil, "civil/minwon", off).choices[0].message.content == REFUSAL
    assert _ask(civil, "civil", off, max_tokens=3).choices[0].message.content != REFUSAL
    on = _ask(civil, "civil/minwon", "전입 신고 기한이 궁금해요", max_tokens=3)
    assert on.choices[0].message.content != REFUSAL and on.usage.completion_tokens > 0
    metrics = httpx.get(civil.base_url + "/metrics").text
    assert 'kollm:requests_off_domain_total{model_name="civil"} 1.0' in metrics


def test_qa_needs_documents(civil, civil_home, tmp_path):
    with pytest.raises(openai.BadRequestError) as refused:
        _ask(civil, "civil/qa", "여권을 잃어버리면 어디에 신고하나요?")
    assert refused.value.body["param"] == "task"
    assert "rag.collection" in refused.value.body["message"]
    (tmp_path / "passport.txt").write_text(
        "여권을 잃어버리면 구청 민원여권과에 분실 신고를 합니다.", encoding="utf-8"
    )
    RagIndex(civil_home).index_paths("docs", [tmp_path])
    answer = _ask(
        civil,
        "civil/qa",
        "여권을 잃어버리면 어디에 신고하나요?",
        max_tokens=3,
        extra_body={"rag": {"collection": "docs"}},
    )
    assert answer.model_extra["citations"][0]["doc_id"] == "passport.txt"


def test_recipe_tasks_are_checked_when_the_recipe_loads(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nserve:\n  tasks:\n    x:\n      temprature: 0\n", encoding="utf-8")
    unknown = r"serve\.tasks\.x\.temprature: unknown key; did you mean 'temperature'"
    with pytest.raises(RecipeError, match=unknown):
        load_recipe(path)
    path.write_text("name: t\nserve:\n  tasks:\n    x:\n      template: 요약\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"serve\.tasks\.x: template must hold \{input\}"):
        load_recipe(path)
    path.write_text("name: t\nserve:\n  tasks:\n    Big:\n      system: 안녕\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="task name 'Big'"):
        load_recipe(path)
    path.write_text(RECIPE, encoding="utf-8")
    assert load_recipe(path).serve.tasks == recorded_tasks(RECIPE)


def test_a_task_prompt_joins_the_request_s_own_system_turn():
    task = TaskConfig(system="요약 도우미", template="요약: {input}")
    messages = [
        {"role": "system", "content": "존댓말"},
        {"role": "user", "content": "{괄호} 그대로"},
        {"role": "assistant", "content": "네"},
        {"role": "user", "content": "다시"},
    ]
    shaped = task_messages(task, messages)
    assert shaped[0] == {"role": "system", "content": "요약 도우미\n\n존댓말"}
    assert [m["content"] for m in shaped[1:]] == ["{괄호} 그대로", "네", "요약: 다시"]
    assert messages[3]["content"] == "다시"  # the request's turns are not changed
    assert recorded_tasks("serve: [not, a, mapping]") == {}


def test_the_playground_picks_tasks(start_server, civil_home):
    server = start_server(
        refs=["civil"], engine="transformers", registry_home=civil_home, api_keys=("k",)
    )
    client, _ = _login(server, "k")
    page = client.get("/ui/chat").text
    assert '<select name="task">' in page
    assert '<option value="summarise"' in page and '<option value="minwon"' in page
    assert "body.task = form.task.value" in client.get("/ui/static/chat.js").text
    reply = client.post(
        "/v1/chat/completions",
        json={
            "model": "civil",
            "task": "brief",
            "messages": [{"role": "user", "content": "전입"}],
        },
    )
    assert reply.status_code == 200 and reply.json()["task"] == "brief"

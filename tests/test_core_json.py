"""JSON that parses: local repair shapes, LLM repair, bounded regeneration, copyright workaround."""
import json

import pytest

from coser.errors import LLMUnavailable

from coser.jsonio import COPYRIGHT_ACCEPT, JsonFailure, get_json, parse_json
from tests.fakeserver import Fault


@pytest.mark.parametrize("text,expected", [
    ('{"a": 1}', {"a": 1}),
    ('Sure! Here it is:\n```json\n{"a": [1, 2]}\n```\nEnjoy.', {"a": [1, 2]}),
    ('{"a": "line one\nline two"}', {"a": "line one\nline two"}),          # raw newline inside a string
    ('{"plots": [{"x": 1}, {"x": 2', {"plots": [{"x": 1}, {"x": 2}]}),       # cut mid-structure
    ('{"a": "cut mid-str', {"a": "cut mid-str"}),                            # cut mid-string
    ("noise {\"k\": 1} more noise {\"k\": 2, \"longer\": true}", {"k": 2, "longer": True}),
])
def test_local_repair_shapes(text, expected):
    assert parse_json(text) == expected


@pytest.mark.parametrize("text", ["", None, "I cannot help with that.", "just words, no braces"])
def test_unparseable(text):
    assert parse_json(text) is None


def test_llm_repair_then_validate(fake_server, make_llm):
    llm = make_llm()
    fake_server.queue("I refuse to format this properly", '{"fixed": true}')
    out = get_json(llm, "gpt-4o", "give json", validate=lambda v: v if v.get("fixed") else None)
    assert out == {"fixed": True}
    reqs = fake_server.chat_requests()
    assert len(reqs) == 2 and "json.loads" in reqs[1]["messages"][0]["content"]


def test_regenerates_until_valid_then_fails_explicitly(fake_server, make_llm):
    llm = make_llm()
    fake_server.set_responder(lambda body: '{"wrong": 1}')
    out = get_json(llm, "gpt-4o", "give json", validate=lambda v: "right" in v and v, max_retry=3)
    assert isinstance(out, JsonFailure) and not out
    assert out.raw == '{"wrong": 1}' and out.attempts == 4 and "invalid" in out.reason
    temps = [r["temperature"] for r in fake_server.chat_requests()]
    assert temps == [0.0, 1.0, 1.0, 1.0]


def test_validator_exceptions_reject(fake_server, make_llm):
    llm = make_llm()
    fake_server.queue('{"a": 1}', '{"b": 2}')
    out = get_json(llm, "gpt-4o", "q", validate=lambda v: v["b"])
    assert out == 2


def test_endpoint_down_stops_instead_of_hanging_or_faking_a_parse_failure(fake_server, make_llm):
    llm = make_llm(max_attempts=2)
    fake_server.set_responder(lambda body: Fault.http(503))
    with pytest.raises(LLMUnavailable) as e:
        get_json(llm, "gpt-4o", "q")
    assert "gave up after 2 attempts" in str(e.value)
    assert len(fake_server.chat_requests()) == 2


def test_copyright_refusal_workaround(fake_server, make_llm):
    llm = make_llm()
    fake_server.queue("Sorry, I can't reproduce that text because of copyright.", '{"plots": []}', '{"plots": [1]}')
    out = get_json(llm, "gpt-4o", "extract", validate=lambda v: v if v["plots"] else None, copyright_retry=True)
    assert out == {"plots": [1]}
    reqs = fake_server.chat_requests()
    assert len(reqs[1]["messages"]) == 3 and reqs[1]["messages"][2]["content"] == COPYRIGHT_ACCEPT
    assert len(reqs[2]["messages"]) == 1  # the workaround is undone for the next generation


def test_schema_sent_to_structured_output_models(fake_server, make_llm):
    llm = make_llm()
    fake_server.queue('{"a": 1}')
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert get_json(llm, "gpt-4o", "q", schema=schema) == {"a": 1}
    rf = fake_server.chat_requests()[0]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["schema"] == schema


def test_schema_rejected_by_endpoint_falls_back(fake_server, make_llm):
    llm = make_llm(structured_output="on")
    fake_server.queue(Fault.http(400, message="response_format json_schema is not supported"), '{"a": 1}')
    assert get_json(llm, "some-vllm-model", "q", schema={"type": "object"}) == {"a": 1}
    assert "response_format" not in fake_server.chat_requests()[1]

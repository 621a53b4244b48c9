import jinja2
import pytest

from scope.chat import format_chat

# Gemma 2's official chat template (tokenizer_config.json of google/gemma-2-2b-it),
# which has no system role; the BOS it emits is left out here as in format_chat.
GEMMA2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


def render_official(messages, add_generation_prompt=True):
    return (
        jinja2.Environment()
        .from_string(GEMMA2_TEMPLATE)
        .render(messages=messages, add_generation_prompt=add_generation_prompt)
    )


def test_release_note_knock_knock_example():
    messages = [
        {"role": "user", "content": "knock knock"},
        {"role": "model", "content": "who is there"},
        {"role": "user", "content": "LaMDA"},
        {"role": "model", "content": "LaMDA who?"},
    ]
    expected = (
        "<start_of_turn>user\nknock knock<end_of_turn>\n"
        "<start_of_turn>model\nwho is there<end_of_turn>\n"
        "<start_of_turn>user\nLaMDA<end_of_turn>\n"
        "<start_of_turn>model\nLaMDA who?<end_of_turn>\n"
    )
    assert format_chat(messages, add_generation_prompt=False) == expected


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_matches_official_gemma2_template(add_generation_prompt):
    messages = [
        {"role": "user", "content": "  Who are you? Please, answer in pirate-speak.\n"},
        {"role": "assistant", "content": "Ahoy, matey!  "},
        {"role": "user", "content": "Tell me more."},
    ]
    assert format_chat(messages, add_generation_prompt) == render_official(messages, add_generation_prompt)
    assert not format_chat(messages).startswith("<bos>")


def test_system_message_is_folded_into_first_user_turn():
    text = format_chat(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
        ]
    )
    assert text == "<start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.parametrize(
    "messages, fragment",
    [
        ([{"role": "tool", "content": "x"}], "'tool'"),
        ([{"role": "model", "content": "x"}], "alternate"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "system"),
        ([], "non-empty"),
        ([{"content": "no role"}], "'role'"),
    ],
)
def test_bad_messages_raise_clear_errors(messages, fragment):
    with pytest.raises(ValueError, match=fragment):
        format_chat(messages)


def test_is_messages_tells_a_chat_from_a_prompt():
    from scope.chat import is_messages

    assert is_messages([{"role": "user", "content": "hi"}])
    assert is_messages(({"role": "user", "content": "hi"},))
    for value in ["hi", [], ["hi"], [{"role": "user", "content": "hi"}, "x"], None, b"hi"]:
        assert not is_messages(value), value

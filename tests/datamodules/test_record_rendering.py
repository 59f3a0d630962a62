"""Record rendering: `template` (format-free text), `template_prompt`, and multi-turn chats
(`messages_field`, `chat_template`) with assistant-only loss, through the reader and the store."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from common import IGNORE_INDEX
from common.errors import ConfigError, DataError
from datamodules.chat_template import ChatRenderer, check_messages
from datamodules.packing import PackedRows
from datamodules.pretraining import PretrainingDataModule
from datamodules.sources import (
    ReadStats,
    Sample,
    SourceSpec,
    read_records,
    read_samples,
    source_fingerprint,
)
from datamodules.store import (
    _MASK_RULE,
    TokenizedStore,
    completion_mask,
    loss_span_mask,
    store_fingerprint,
    tokenizer_fingerprint,
)
from datamodules.world.chat import CHAT_TEMPLATE
from tests.datamodules.test_completion_loss import _old_fingerprint

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A ChatML-like template (Qwen's layout without its default system prompt)."""

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Where was Alice born?"},
    {"role": "assistant", "content": "Orlin."},
    {"role": "user", "content": "When?"},
    {"role": "assistant", "content": "In 1987."},
]
INSTRUCTION = {"instruction": "Where was Alice born?", "response": "In Orlin.", "id": 3}
PAIR = {"instruction": "Where does Bram live?", "chosen": "Dunmore.", "rejected": "Orlin."}
CORPUS = [
    "Alice Varen was born in Orlin in 1987. She studied physics at Mereth University.",
    "Bram Oster works for Kestrel Labs as an engineer and lives in Dunmore.",
    "Where was Alice born? Where does Bram live? When? Be brief. In 1987.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ; : ! ? ( ) ' \" - appear too.",
]


@pytest.fixture(scope="module")
def world_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world tokenizer (its special tokens and `CHAT_TEMPLATE`) trained in-process, saved."""
    from datamodules.world.tokenizer import save_tokenizer, train_tokenizer

    out = tmp_path_factory.mktemp("world_tokenizer")
    return save_tokenizer(train_tokenizer(CORPUS * 4, vocab_size=300), out)


@pytest.fixture(scope="module")
def world_tokenizer(world_tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(world_tokenizer_dir)


@pytest.fixture(scope="module")
def chatml_tokenizer(tiny_tokenizer_dir: Path) -> Any:
    """The tiny tokenizer (no chat template) plus ChatML's markers as special tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    assert not tokenizer.chat_template
    return tokenizer


def chat_spec(path: Path, **kw: Any) -> SourceSpec:
    args: dict[str, Any] = {"path": str(path), "kind": "sample", "messages_field": "messages"}
    args.update(kw)
    spec = SourceSpec(**args)
    spec.validate("data.init_args.train_sources[0]")
    return spec


def target_runs(tokenizer: Any, ids: np.ndarray, mask: np.ndarray) -> list[str]:
    """The decoded runs of consecutive target tokens (mask 1)."""
    runs: list[list[int]] = []
    previous = 0
    for token, m in zip(ids.tolist(), mask.tolist()):
        if m and not previous:
            runs.append([])
        if m:
            runs[-1].append(token)
        previous = m
    return [tokenizer.decode(run) for run in runs]


def ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# -- chats --------------------------------------------------------------------------------------


def test_chatml_targets_are_exactly_the_assistant_turns(
    chatml_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_jsonl("chats.jsonl", [{"messages": CHAT}])
    spec = chat_spec(path, chat_template=CHATML)
    store = TokenizedStore.get_or_build(spec, chatml_tokenizer, tmp_path / "c")
    text = chatml_tokenizer.apply_chat_template(CHAT, chat_template=CHATML, tokenize=False)
    eos = chatml_tokenizer.eos_token_id
    assert store.document(0).tolist() == [*ids(chatml_tokenizer, text), eos]  # one EOS appended
    runs = target_runs(chatml_tokenizer, store.document(0), store.document_mask(0))
    # content + end marker (+ what ChatML writes after it); the EOS appended after the chat is
    # never a target: the template's own end of turn is what the model learns to stop on
    assert runs == ["Orlin.<|im_end|>\n", "In 1987.<|im_end|>\n"]
    assert store.document_mask(0)[-1] == 0
    assert store.manifest["source"]["chats"] == {"assistant_turns": 2, "without_assistant": 0}
    assert store.completion_tokens == int(store.document_mask(0).sum())


def test_world_tokenizer_template_and_its_eos(
    world_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    ends_with_user = [*CHAT, {"role": "user", "content": "Thanks!"}]
    path = write_jsonl("chats.jsonl", [{"messages": CHAT}, {"messages": ends_with_user}])
    store = TokenizedStore.get_or_build(chat_spec(path), world_tokenizer, tmp_path / "c")
    text = world_tokenizer.apply_chat_template(CHAT, tokenize=False)
    # the world template ignores the system turn and ends an assistant turn with EOS
    assert text == (
        "<|user|>Where was Alice born?<|assistant|>Orlin.<|endoftext|>"
        "<|user|>When?<|assistant|>In 1987.<|endoftext|>"
    )
    assert store.document(0).tolist() == ids(world_tokenizer, text)  # its own EOS: none added
    runs = target_runs(world_tokenizer, store.document(0), store.document_mask(0))
    assert runs == ["Orlin.<|endoftext|>", "In 1987.<|endoftext|>"]
    # ending with a user turn: the appended EOS gets no loss
    second, mask = store.document(1), store.document_mask(1)
    assert second[-1] == world_tokenizer.eos_token_id and mask[-1] == 0
    assert target_runs(world_tokenizer, second, mask) == runs


def test_chat_without_assistant_turn_is_kept_counted_and_logged(
    chatml_tokenizer: Any,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    records = [{"messages": CHAT}, {"messages": CHAT[:2]}, {"messages": CHAT[2:3]}]
    path = write_jsonl("chats.jsonl", records)
    spec = chat_spec(path, chat_template=CHATML, name="sft")
    with caplog.at_level(logging.WARNING):
        store = TokenizedStore.get_or_build(spec, chatml_tokenizer, tmp_path / "c")
    assert "sft: 1 of 3 chats have no assistant turn" in caplog.text
    assert store.num_documents == 3 and not store.document_mask(1).any()
    # an assistant-first chat: its header is not a target, its content and marker are
    runs = target_runs(chatml_tokenizer, store.document(2), store.document_mask(2))
    assert runs == ["Orlin.<|im_end|>\n"]
    rows = PackedRows(store, 128, kind="sample", packing=False, name="sft")
    assert rows.stats.samples_without_targets == 1


def test_plain_flattening_is_format_free_with_full_loss(
    chatml_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_jsonl("chats.jsonl", [{"messages": CHAT}])
    spec = chat_spec(path, chat_template="plain")
    expected = "Be brief.\nWhere was Alice born?\nOrlin.\nWhen?\nIn 1987."
    assert list(read_samples(spec, ReadStats())) == [Sample(expected, None)]  # no tokenizer needed
    store = TokenizedStore.get_or_build(spec, chatml_tokenizer, tmp_path / "c")
    assert store.loss_mask is None  # every token is a target, as in a document
    assert store.document(0).tolist() == [
        *ids(chatml_tokenizer, expected),
        chatml_tokenizer.eos_token_id,
    ]


def test_same_template_text_same_store(
    chatml_tokenizer: Any, world_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_jsonl("chats.jsonl", [{"messages": CHAT}])
    jinja = tmp_path / "chatml.jinja"
    jinja.write_text(CHATML)
    inline = store_fingerprint(chat_spec(path, chat_template=CHATML), chatml_tokenizer)
    from_file = store_fingerprint(chat_spec(path, chat_template=str(jinja)), chatml_tokenizer)
    assert inline == from_file  # same template text, same store
    jinja.write_text(CHATML.replace("<|im_end|>\n", "<|im_end|>"))  # edited: a new store
    assert store_fingerprint(chat_spec(path, chat_template=str(jinja)), chatml_tokenizer) != inline
    plain = store_fingerprint(chat_spec(path, chat_template="plain"), chatml_tokenizer)
    assert plain not in (inline, from_file)
    own = store_fingerprint(chat_spec(path), world_tokenizer)  # `tokenizer`: its CHAT_TEMPLATE
    assert own == store_fingerprint(chat_spec(path, chat_template=CHAT_TEMPLATE), world_tokenizer)


def test_chats_from_parquet_and_hf(chatml_tokenizer: Any, tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected = [ChatRenderer(CHATML)(check_messages(CHAT))] * 2
    pq.write_table(pa.table({"messages": [CHAT, CHAT]}), tmp_path / "c.parquet")
    datasets.Dataset.from_dict({"messages": [CHAT, CHAT]}).save_to_disk(str(tmp_path / "saved"))
    for path in (tmp_path / "c.parquet", tmp_path / "saved"):
        got = list(read_samples(chat_spec(path, chat_template=CHATML), ReadStats()))
        assert [(s.text, s.loss_spans) for s in got] == [(e.text, e.loss_spans) for e in expected]


def test_packed_chats_do_not_cross_contaminate(
    world_tokenizer_dir: Path,
    world_tokenizer: Any,
    write_jsonl: Callable[..., Path],
    tmp_path: Path,
) -> None:
    chats = [
        {"messages": CHAT},
        {"messages": [{"role": "user", "content": "Where does Bram live?"}, CHAT[2]]},
        {"messages": [CHAT[1], {"role": "assistant", "content": "Dunmore."}]},
    ] * 3
    path = write_jsonl("chats.jsonl", chats)
    dm = PretrainingDataModule(
        tokenizer=str(world_tokenizer_dir),
        train_sources=[{"path": str(path), "kind": "sample", "messages_field": "messages"}],  # type: ignore[list-item]
        max_length=96,
        micro_batch_size=1,
        packing=True,
        cache_dir=str(tmp_path / "stores"),
    )
    dm.setup("fit")
    store = dm.train_dataset.parts[0].store
    assert store.loss_mask is not None and store.num_documents == len(chats)
    user = world_tokenizer.convert_tokens_to_ids("<|user|>")
    answers = {"Orlin.<|endoftext|>", "In 1987.<|endoftext|>", "Dunmore.<|endoftext|>"}
    segments_per_row, all_runs = [], []
    for batch in dm.train_dataloader():
        labels, input_ids = batch["labels"][0], batch["input_ids"][0]
        starts = torch.nonzero(batch["position_ids"][0] == 0).flatten().tolist()
        real = [s for s in starts if batch["attention_mask"][0][s]]
        segments_per_row.append(len(real))
        for s in real:
            assert input_ids[s] == user  # every chat starts a segment
            assert labels[s] == IGNORE_INDEX  # never predicted from the previous chat
        runs = target_runs(world_tokenizer, input_ids, (labels != IGNORE_INDEX).to(torch.uint8))
        assert runs and set(runs) <= answers  # only assistant turns, each with its end marker
        all_runs.extend(runs)
    assert max(segments_per_row) >= 2  # several chats in a row
    # every assistant turn exactly once (one epoch covers every row once)
    expected = ["Orlin.<|endoftext|>"] * 6 + ["In 1987.<|endoftext|>", "Dunmore.<|endoftext|>"] * 3
    assert sorted(all_runs) == sorted(expected)


# -- format templates ---------------------------------------------------------------------------


def test_template_renders_instruction_and_preference_records(
    tiny_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    sft = write_jsonl("sft.jsonl", [INSTRUCTION])
    pairs = write_jsonl("pairs.jsonl", [PAIR])
    spec = SourceSpec(path=str(sft), template="{instruction}\n{response}")
    spec.validate("x")
    assert list(read_samples(spec, ReadStats())) == [
        Sample("Where was Alice born?\nIn Orlin.", None)
    ]
    pair_spec = SourceSpec(path=str(pairs), template="{instruction}\n{chosen}")
    assert list(read_records(pair_spec, ReadStats())) == [("Where does Bram live?\nDunmore.", None)]
    store = TokenizedStore.get_or_build(spec, tiny_tokenizer, tmp_path / "c")
    assert store.loss_mask is None
    expected = ids(tiny_tokenizer, "Where was Alice born?\nIn Orlin.")
    assert store.document(0).tolist() == [*expected, tiny_tokenizer.eos_token_id]
    literal = SourceSpec(path=str(sft), template="{{Q}} {instruction} {{A}} {response}")
    assert next(read_samples(literal, ReadStats())).text == (
        "{Q} Where was Alice born? {A} In Orlin."
    )


def test_template_in_parquet_and_hf(tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {k: [v, v] for k, v in PAIR.items()}
    pq.write_table(pa.table(columns), tmp_path / "p.parquet")
    datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "saved"))
    for path in (tmp_path / "p.parquet", tmp_path / "saved"):
        spec = SourceSpec(path=str(path), template="{instruction}\n{chosen}")
        assert [s.text for s in read_samples(spec, ReadStats())] == [
            "Where does Bram live?\nDunmore."
        ] * 2
    missing = SourceSpec(path=str(tmp_path / "p.parquet"), template="{prompt}\n{chosen}")
    with pytest.raises(DataError, match=r"p\.parquet: record 0 \(0-based row\): field 'prompt'"):
        list(read_samples(missing, ReadStats()))
    saved = SourceSpec(path=str(tmp_path / "saved"), template="{response}")
    with pytest.raises(DataError, match=r"saved\[train\]: record 0: field 'response' missing"):
        list(read_samples(saved, ReadStats()))


def test_template_prompt_masks_exactly_the_instruction(
    tiny_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_jsonl("sft.jsonl", [INSTRUCTION])
    spec = SourceSpec(
        path=str(path),
        kind="sample",
        template="{instruction}\n{response}",
        template_prompt="{instruction}\n",
    )
    spec.validate("x")
    prompt = "Where was Alice born?\n"
    assert list(read_records(spec, ReadStats())) == [(prompt + "In Orlin.", prompt)]
    store = TokenizedStore.get_or_build(spec, tiny_tokenizer, tmp_path / "c")
    mask = store.document_mask(0)
    assert mask.tolist() == [0] * len(ids(tiny_tokenizer, prompt)) + [1] * (
        len(mask) - len(ids(tiny_tokenizer, prompt))
    )
    assert target_runs(tiny_tokenizer, store.document(0), mask) == ["In Orlin.<|endoftext|>"]
    assert store.manifest["source"]["template_prompt"] == "{instruction}\n"


# -- errors ---------------------------------------------------------------------------------------


def one_line_error(kind: type[Exception], fn: Callable[[], Any]) -> str:
    with pytest.raises(kind) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_template_data_errors_name_file_line_and_field(write_jsonl: Callable[..., Path]) -> None:
    records = [INSTRUCTION] * 6 + [{"instruction": "Where?"}]
    path = write_jsonl("data.jsonl", records)
    spec = SourceSpec(path=str(path), template="{instruction}\n{response}")
    message = one_line_error(DataError, lambda: list(read_samples(spec, ReadStats())))
    assert message == (
        f"{path}:7: field 'response' missing (template '{{instruction}}\\n{{response}}')"
    )
    typed = write_jsonl("typed.jsonl", [{"instruction": "Q", "response": ["a", "b"]}])
    spec = SourceSpec(path=str(typed), template="{instruction} {response}")
    message = one_line_error(DataError, lambda: list(read_samples(spec, ReadStats())))
    assert message.startswith(f"{typed}:1: field 'response' must be a string, got list")
    spec = SourceSpec(
        path=str(path), kind="sample", template="{response}", template_prompt="{instruction}"
    )
    message = one_line_error(DataError, lambda: list(read_samples(spec, ReadStats())))
    assert message.startswith(f"{path}:1: the rendered template_prompt is not a prefix")


@pytest.mark.parametrize(
    ("chat", "expected"),
    [
        (
            "hello",
            "field 'messages': must be a list of {'role': ..., 'content': ...} turns, got str",
        ),
        ([], "field 'messages': is an empty chat"),
        (
            [{"from": "human", "value": "hi"}],
            "field 'messages': turn 0 has no 'role' (keys: 'from', 'value')",
        ),
        ([{"role": "user"}], "field 'messages': turn 0 has no 'content'"),
        ([{"role": "human", "content": "hi"}], "field 'messages': turn 0 has role 'human'"),
        (
            [CHAT[1], {"role": "assistant", "content": None}],
            "field 'messages': turn 1 (assistant): 'content' must be a string, got null",
        ),
        ([CHAT[1], "hi"], "field 'messages': turn 1 must be an object"),
    ],
)
def test_malformed_messages_name_file_and_line(
    chat: Any, expected: str, write_jsonl: Callable[..., Path]
) -> None:
    path = write_jsonl("chats.jsonl", [{"messages": CHAT}, {"messages": chat}])
    spec = chat_spec(path, chat_template="plain")
    message = one_line_error(DataError, lambda: list(read_samples(spec, ReadStats())))
    assert message.startswith(f"{path}:2: {expected}")


def test_missing_messages_field_and_tokenizer_without_template(
    chatml_tokenizer: Any, write_jsonl: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_jsonl("chats.jsonl", [{"messages": CHAT}, {"turns": CHAT}])
    message = one_line_error(
        DataError, lambda: list(read_samples(chat_spec(path, chat_template="plain"), ReadStats()))
    )
    assert message == f"{path}:2: field 'messages' missing; set `messages_field`"
    message = one_line_error(
        ConfigError,
        lambda: TokenizedStore.get_or_build(chat_spec(path), chatml_tokenizer, tmp_path / "c"),
    )
    assert message.startswith("config key 'data.init_args.train_sources[0].chat_template': ")
    assert "has no chat template" in message and "set `chat_template`" in message


def test_template_that_does_not_render_prefixes_is_a_data_error(
    chatml_tokenizer: Any, write_jsonl: Callable[..., Path]
) -> None:
    # like templates that drop earlier reasoning or inject the turn count / a date
    counting = "{{ messages | length }}:" + CHATML
    path = write_jsonl("chats.jsonl", [{"messages": CHAT}])
    spec = chat_spec(path, chat_template=counting)
    message = one_line_error(
        DataError, lambda: list(read_samples(spec, ReadStats(), chatml_tokenizer))
    )
    assert message.startswith(
        f"{path}:1: field 'messages': the chat template does not render prefixes consistently"
    )
    raising = "{{ raise_exception('roles must alternate') }}"
    spec = chat_spec(path, chat_template=raising)
    message = one_line_error(
        DataError, lambda: list(read_samples(spec, ReadStats(), chatml_tokenizer))
    )
    assert "the chat template failed" in message and "roles must alternate" in message


def test_template_without_generation_prompt_warns(
    write_jsonl: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    headerless = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    path = write_jsonl("chats.jsonl", [{"messages": CHAT}])
    with caplog.at_level(logging.WARNING):
        (sample,) = read_samples(chat_spec(path, chat_template=headerless), ReadStats())
    assert "ignores add_generation_prompt" in caplog.text
    assert [sample.text[a:b] for a, b in sample.loss_spans or ()] == ["Orlin.\n", "In 1987.\n"]
    with pytest.raises(ConfigError, match="given no tokenizer"):
        list(read_samples(chat_spec(path), ReadStats()))


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    def error(**kw: Any) -> str:
        args: dict[str, Any] = {"path": "a.jsonl", "kind": "sample", **kw}
        return one_line_error(ConfigError, lambda: SourceSpec(**args).validate("s"))

    assert error(template="{instruction}\n{response").startswith(
        "config key 's.template': not a valid format"
    )
    assert error(template="{} {response}").startswith("config key 's.template': positional")
    assert error(template="{a.b}").startswith("config key 's.template': placeholder {a.b}")
    assert error(template="{a!r}").startswith("config key 's.template': placeholder {a...}")
    assert error(template="no fields").startswith("config key 's.template': names no field")
    assert error(template="{a}", text_field="body").startswith(
        "config key 's.text_field': is not read"
    )
    assert error(template="{a}", prompt_field="p").startswith("config key 's.prompt_field'")
    assert error(template_prompt="{a}").startswith("config key 's.template_prompt': needs template")
    assert "kind: sample" in error(template="{a}\n{b}", template_prompt="{a}", kind="document")
    assert error(template="{a}", format="text").startswith("config key 's.template': text files")
    assert "kind: sample" in error(messages_field="m", kind="document")
    assert error(messages_field="m", template="{a}").startswith("config key 's.template'")
    assert error(messages_field="m", text_field="m2").startswith("config key 's.text_field'")
    assert error(chat_template="plain").startswith("config key 's.chat_template': only applies")
    assert error(messages_field="m", chat_template="chatml").startswith(
        "config key 's.chat_template': must be 'tokenizer', 'plain', an inline Jinja"
    )
    assert error(messages_field="m", chat_template="{% for %}").startswith(
        "config key 's.chat_template': not a valid Jinja template"
    )
    assert "cannot read the chat template file" in error(
        messages_field="m", chat_template=str(tmp_path / "missing.jinja")
    )
    SourceSpec(path="a.jsonl", kind="sample", messages_field="m").validate("s")  # defaults: fine


# -- mask rule and fingerprints -------------------------------------------------------------------


def test_loss_span_mask_rule() -> None:
    offsets = [(0, 2), (2, 5), (5, 9), (9, 9), (9, 12), (12, 12)]
    assert loss_span_mask(offsets, [(5, 9)]).tolist() == [0, 0, 1, 1, 0, 0]
    assert loss_span_mask(offsets, [(3, 6)]).tolist() == [0, 1, 1, 0, 0, 0]  # straddlers: loss
    assert loss_span_mask(offsets, [(0, 2), (9, 12)]).tolist() == [1, 0, 0, 0, 1, 1]
    assert loss_span_mask(offsets, []).tolist() == [0] * 6
    assert loss_span_mask(offsets, None).tolist() == [1] * 6
    rng = np.random.default_rng(0)
    for _ in range(50):  # one span to the end is exactly the prompt rule
        cuts = np.sort(rng.integers(0, 30, size=12))
        offs = list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))
        p = int(rng.integers(0, 31))
        want = [int(end > p) for _start, end in offs]
        assert completion_mask(offs, p).tolist() == want
        assert loss_span_mask(offs, [(p, int(cuts[-1]))]).tolist() == want


def test_fingerprints_of_existing_sources_are_unchanged(
    tiny_tokenizer: Any, write_jsonl: Callable[..., Path]
) -> None:
    path = write_jsonl("f.jsonl", [{"text": "Q: a A: b", "prompt": "Q: a"}])
    plain = SourceSpec(path=str(path), kind="sample")
    assert store_fingerprint(plain, tiny_tokenizer) == _old_fingerprint(plain, tiny_tokenizer)
    masked = SourceSpec(path=str(path), kind="sample", prompt_field="prompt")
    payload = {  # the payload of a prompt_field store before rendering settings existed
        "version": 1,
        "dtype": "uint32",
        "eos": "append-unless-present",
        "source": source_fingerprint(masked),
        "text_field": "text",
        "split": "train",
        "tokenizer": tokenizer_fingerprint(tiny_tokenizer),
        "prompt_field": "prompt",
        "loss_mask": _MASK_RULE,
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    assert (
        store_fingerprint(masked, tiny_tokenizer)
        == hashlib.blake2b(blob, digest_size=12).hexdigest()
    )
    rendered = {
        store_fingerprint(SourceSpec(path=str(path), template="{text}"), tiny_tokenizer),
        store_fingerprint(SourceSpec(path=str(path), template="{prompt}"), tiny_tokenizer),
        store_fingerprint(
            SourceSpec(
                path=str(path), kind="sample", template="{text}", template_prompt="{prompt}"
            ),
            tiny_tokenizer,
        ),
    }
    assert len(rendered) == 3 and store_fingerprint(plain, tiny_tokenizer) not in rendered

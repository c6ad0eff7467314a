"""The final model as a Hugging Face folder, and loading it back for inference.

A BERT-based model (``minilm-head``, ``minilm-finetune``, a local checkpoint) is exported whole:
the base encoder's weights with the trained top layers substituted, plus the classifier, as a
``FedintentBertForSequenceClassification`` (``hf_classifier.py``, copied into the folder as
``modeling_fedintent.py``) with its tokenizer, so ``transformers.pipeline`` runs it without
fedintent. An ``ngram`` model is exported as its linear layer and featurizer settings: its
features are hashed n-grams, not token ids from a tokenizer, so no transformers pipeline can
feed it. A ``use-multilingual`` model is exported as its linear head and the encoder's package
and version: the Universal Sentence Encoder is a numpy model with no transformers
implementation. ``load_exported`` runs both (and the BERT ones). ``fedintent.json`` names the
family and labels, so fedintent can also rebuild the exchanged module (``load_exchanged``).

The folder is written next to its destination and renamed into place; an earlier export at
the destination is only removed once the new one is complete. ``fedintent.json`` records the
SHA-256 of each weights file and of every other file written but the model card, and loading
refuses a folder missing one of them or holding one that does not match, weights with NaN or
infinite values, and (BERT families) weights whose tensors are not exactly the model's.
"""

import hashlib
import json
import math
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from fl_protocol.durable_files import sync_folder, sync_tree
from fl_protocol.file_owner import not_a_file
from models.encoder import MAX_TOKENS, load_encoder
from models.family import ModelFamily, get_model_family
from models.feature_scale import FEATURE_SCALE
from models.hf_classifier import FedintentBertConfig, FedintentBertForSequenceClassification

# With the class registered, pipeline("text-classification", model=FOLDER) loads an export
# without trust_remote_code in any process that imported this module (``fedintent predict``).
# Registered here, not in ``models/__init__``: the BERT code costs seconds to import, and every
# site process imports ``models``.
AutoConfig.register(FedintentBertConfig.model_type, FedintentBertConfig, exist_ok=True)
AutoModelForSequenceClassification.register(
    FedintentBertConfig, FedintentBertForSequenceClassification, exist_ok=True
)

FRAMEWORK_FILE = "fedintent.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_DIGESTS = "weights_sha256"
"""fedintent.json's key: each weights file's name and the SHA-256 (hex) of its bytes."""
FILE_DIGESTS = "files_sha256"
"""fedintent.json's key: the SHA-256 (hex) of every other file the export wrote (config.json,
the tokenizer's files, the model code), all but fedintent.json and the model card."""
TOKENIZER_FILE = "tokenizer.json"
MODEL_CODE_FILE = "modeling_fedintent.py"
CARD_FILE = "README.md"
NGRAM_MODEL_TYPE = "fedintent-ngram"
USE_MODEL_TYPE = "fedintent-use-multilingual"
LINEAR_MODEL_TYPES = (NGRAM_MODEL_TYPE, USE_MODEL_TYPE)
"""Exports holding only the exchanged linear layer, under its own parameter names."""
AUTO_MAP = {
    "AutoConfig": "modeling_fedintent.FedintentBertConfig",
    "AutoModelForSequenceClassification":
        "modeling_fedintent.FedintentBertForSequenceClassification",
}
PREDICT_BATCH = 64
_ENCODER_CONFIG_KEYS_DROPPED = ("model_type", "architectures", "auto_map", "transformers_version")


def export_model(out_dir: Path, family: ModelFamily, state_dict: dict[str, torch.Tensor],
                 labels: list[str], card: str, metadata: dict | None = None) -> Path:
    """Write the trained model (``state_dict``: the exchanged parameters) to ``out_dir``.

    ``card`` becomes README.md; ``metadata`` (run id, rounds) goes into fedintent.json.
    """
    module = family.build_model(len(labels))
    module.load_state_dict(state_dict)  # a clear error if the parameters are not this family's
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        if family.encoder_path is None:
            _write_linear(tmp, _featurizer_config(family) | {"feature_scale": FEATURE_SCALE},
                          module.state_dict(), labels)
        else:
            _write_bert(tmp, family, module.state_dict(), labels)
        info = {"model_family": family.name, "labels": labels,
                "trained_layers": family.trained_layers, **(metadata or {}),
                WEIGHTS_DIGESTS: _weights_digests(tmp), FILE_DIGESTS: _file_digests(tmp)}
        (tmp / FRAMEWORK_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
        for path in [tmp, *tmp.iterdir()]:  # mkdtemp and safetensors would make them owner-only
            path.chmod(0o755 if path.is_dir() else 0o644)
        sync_tree(tmp)  # on disk before it takes the export's name (found in review)
        _replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _featurizer_config(family: ModelFamily) -> dict:
    """config.json's model type and featurizer of a family exported as its linear layer: what
    ``load_exported`` needs to compute the same features again."""
    if family.name == "ngram":
        from models.ngram import SETTINGS

        return {"model_type": NGRAM_MODEL_TYPE, "featurizer": SETTINGS}
    if family.name == "use-multilingual":
        from models.use_multilingual import DISTRIBUTION, encoder_version

        return {"model_type": USE_MODEL_TYPE,
                "encoder": {"package": DISTRIBUTION, "version": encoder_version()}}
    raise ValueError(f"model family {family.name!r} has no export format")


def _write_linear(folder: Path, featurizer: dict, exchanged: dict[str, torch.Tensor],
                  labels: list[str]) -> None:
    config = _label_config(labels) | featurizer
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.detach().contiguous() for k, v in exchanged.items()},
              str(folder / WEIGHTS_FILE), metadata={"format": "pt"})


def _write_bert(folder: Path, family: ModelFamily, exchanged: dict[str, torch.Tensor],
                labels: list[str]) -> None:
    from transformers import AutoTokenizer

    encoder_path = Path(family.encoder_path)
    raw = json.loads((encoder_path / "config.json").read_text(encoding="utf-8"))
    settings = {k: v for k, v in raw.items() if k not in _ENCODER_CONFIG_KEYS_DROPPED}
    config = FedintentBertConfig.from_dict(settings | _label_config(labels)
                                           | {"feature_scale": FEATURE_SCALE})
    config.auto_map = AUTO_MAP
    first_trained = config.num_hidden_layers - family.trained_layers
    weights = {f"bert.{k}": v for k, v in load_encoder(encoder_path)[1].state_dict().items()
               if not k.startswith("pooler.")}
    weights |= {_export_key(k, first_trained): v for k, v in exchanged.items()}
    model = FedintentBertForSequenceClassification(config)
    model.load_state_dict(weights)
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(encoder_path, local_files_only=True,
                                              model_max_length=MAX_TOKENS)
    tokenizer.save_pretrained(folder)
    shutil.copyfile(Path(__file__).with_name("hf_classifier.py"), folder / MODEL_CODE_FILE)


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _weights_digests(folder: Path) -> dict[str, str]:
    """The digest of each weights file written, so that loading can tell bit rot, a partial copy
    or an edit from the weights exported: they load without error and predict wrongly."""
    return {path.name: _sha256(path) for path in sorted(folder.glob("*.safetensors"))}


def _file_digests(folder: Path) -> dict[str, str]:
    """The digest of every file written so far but the weights (``_weights_digests``). Found in
    review: a copy missing tokenizer.json loaded an empty-vocabulary tokenizer that read every
    text as [UNK], and an edited config.json or tokenizer also predicts wrongly without an
    error. The model card, written after, is prose that nothing loads, and may be edited."""
    return {path.name: _sha256(path) for path in sorted(folder.iterdir())
            if path.is_file() and path.suffix != ".safetensors"}


def _label_config(labels: list[str]) -> dict:
    return {
        "num_labels": len(labels),
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
        "problem_type": "single_label_classification",
    }


def _export_key(key: str, first_trained: int) -> str:
    """Where an exchanged parameter lives in the exported transformers model: trained layer i
    replaces encoder layer ``first_trained + i``; the head is the classifier."""
    if key.startswith("layers."):
        _, index, rest = key.split(".", 2)
        return f"bert.encoder.layer.{first_trained + int(index)}.{rest}"
    return "classifier." + key.removeprefix("head.")


def _replace_folder(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is kept aside until the rename is on
    disk, so a power loss leaves one of the two. One kept aside because the folder could not be
    flushed goes at the next export whose flush succeeds (found in review: it stayed for good)."""
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
        old.rmdir()
        target.rename(old)
        try:
            new.rename(target)
        except BaseException:
            old.rename(target)
            raise
    else:
        new.rename(target)
    sync_folder(target.parent)
    for kept_aside in target.parent.glob(f".{target.name}.old.*"):
        shutil.rmtree(kept_aside, ignore_errors=True)


def read_export(model_dir: Path) -> tuple[dict, dict]:
    """(fedintent.json, config.json) of an export; a clear error naming what is missing."""
    model_dir = Path(model_dir)
    if model_dir.is_file():  # found in review: it was "not found"
        raise ValueError(f"{model_dir} is a file, not a folder: give the model folder "
                         "(OUT/model of fedintent train)")
    if not model_dir.is_dir():
        raise ValueError(f"model folder not found: {model_dir}")
    documents = []
    for name in (FRAMEWORK_FILE, "config.json"):
        path = model_dir / name
        if not path.is_file():
            _refuse_other_kind(path, "a JSON file")
            raise ValueError(f"{model_dir}: not a fedintent model export (no {name})")
        try:
            documents.append(json.loads(path.read_text(encoding="utf-8")))
        except PermissionError:
            raise  # not damage: the caller says whose the file is (fl_protocol/file_owner.py)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ValueError(f"{path}: unreadable: {err}") from None
        if not isinstance(documents[-1], dict):
            raise ValueError(f"{path}: expected a JSON object")
    info, config = documents
    labels = info.get("labels")
    if (not isinstance(labels, list) or len(labels) < 2
            or not all(isinstance(label, str) and label for label in labels)
            or len(set(labels)) < len(labels)
            or "model_family" not in info):
        raise ValueError(f"{model_dir / FRAMEWORK_FILE}: needs 'model_family' and 'labels' (at "
                         "least two distinct label names)")
    _verify_weights(model_dir, info.get(WEIGHTS_DIGESTS))
    _verify_files(model_dir, info.get(FILE_DIGESTS))
    return info, config


def _verify_weights(model_dir: Path, digests: object) -> None:
    """Each weights file must be the one exported. An export written before fedintent recorded
    digests loads with a warning: it cannot be re-made without training again (docs/EXPORT.md)."""
    if digests is None:
        print(f"warning: {model_dir / FRAMEWORK_FILE} records no SHA-256 of {WEIGHTS_FILE} (an "
              "export from before fedintent recorded one): damage to its weights cannot be "
              "detected", file=sys.stderr)
        return
    if not _well_formed_digests(digests):
        raise ValueError(f"{model_dir / FRAMEWORK_FILE}: {WEIGHTS_DIGESTS} must map "
                         f"{WEIGHTS_FILE} (and any other weights file in the folder) to its "
                         "SHA-256 in lower-case hex")
    _check_digests(model_dir, digests)


def _verify_files(model_dir: Path, digests: object) -> None:
    """Every other file the export wrote must be there and be the one exported (found in review:
    a folder copied without tokenizer.json labelled every text alike, exit 0). An export from
    before fedintent recorded them loads with a warning; ``load_exported`` checks its tokenizer
    (``_check_unrecorded_tokenizer``)."""
    if digests is None:
        print(f"warning: {model_dir / FRAMEWORK_FILE} records no SHA-256 of its files other "
              "than the weights (an export from before fedintent recorded them): damage to "
              "config.json or the tokenizer cannot be detected", file=sys.stderr)
        return
    if not (isinstance(digests, dict) and all(_plain_name(name) for name in digests)
            and all(_hex_digest(digest) for digest in digests.values())):
        raise ValueError(f"{model_dir / FRAMEWORK_FILE}: {FILE_DIGESTS} must map the names of "
                         "files in the folder to their SHA-256 in lower-case hex")
    _check_digests(model_dir, digests)


def _check_digests(model_dir: Path, digests: dict[str, str]) -> None:
    """Each named file must be in the folder, with the recorded SHA-256."""
    for name, digest in digests.items():
        path = model_dir / name
        if not path.is_file():
            _refuse_other_kind(path, "the weights file" if name.endswith(".safetensors")
                               else "a file")
            raise ValueError(f"{model_dir}: incomplete model export: no {name}, which "
                             f"{FRAMEWORK_FILE} records (copy the whole folder)")
        if _sha256(path) != digest:
            raise ValueError(f"{path} does not match the SHA-256 recorded in {FRAMEWORK_FILE}: "
                             "damaged or edited")


def _refuse_other_kind(path: Path, what: str) -> None:
    """Raise for a ``path`` that is there but is no regular file, which is not missing."""
    problem = not_a_file(path, what)
    if problem:
        raise ValueError(problem)


def _well_formed_digests(digests: object) -> bool:
    """A map from the names of weights files in the folder to hex SHA-256 digests, naming the
    weights file."""
    return (isinstance(digests, dict) and WEIGHTS_FILE in digests
            and all(_plain_name(name) and name.endswith(".safetensors") for name in digests)
            and all(_hex_digest(digest) for digest in digests.values()))


def _plain_name(name: object) -> bool:
    """A file name with no folder: an edited record must not hash files elsewhere."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name


def _hex_digest(digest: object) -> bool:
    """A SHA-256 as fedintent writes it: 64 lower-case hex digits."""
    return isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) is not None


def _read_tensors(model_dir: Path, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The named tensors (all when ``keys`` is None) of the export's weights file."""
    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        _refuse_other_kind(path, "the weights file")
        raise ValueError(f"{Path(model_dir)}: not a fedintent model export (no {WEIGHTS_FILE})")
    with path.open("rb"):  # found in review: safetensors says "No such file" of one it may not read
        pass
    try:
        with safe_open(str(path), framework="pt") as f:
            missing = sorted(set(keys or []) - set(f.keys()))
            if missing:
                raise ValueError(f"{path}: missing tensors {missing[:5]}")
            return {k: f.get_tensor(k) for k in (keys if keys is not None else f.keys())}
    except SafetensorError as err:
        raise ValueError(f"{path}: corrupt safetensors file: {err}") from None


def load_exchanged(model_dir: Path) -> tuple[nn.Module, list[str], dict]:
    """(exchanged module over the family's features, labels, fedintent.json) of an export.

    This is the module the federation trained, for evaluation on features a site computed;
    the family (for a local checkpoint: its folder) must exist on this machine.
    """
    info, config = read_export(model_dir)
    _check_label_names(model_dir, info["labels"], config)
    module = get_model_family(info["model_family"]).build_model(len(info["labels"]))
    first_trained = config.get("num_hidden_layers", 0) - info.get("trained_layers", 0)
    keys = {k: k if config["model_type"] in LINEAR_MODEL_TYPES else _export_key(k, first_trained)
            for k in module.state_dict()}
    tensors = _read_tensors(model_dir, list(keys.values()))
    _check_finite(model_dir, tensors)
    state = {k: tensors[key] for k, key in keys.items()}
    ratio = feature_scale(model_dir, config) / FEATURE_SCALE
    if ratio != 1.0:  # exported by a version whose features had another length
        head = "head.weight" if "head.weight" in state else "weight"
        state[head] = state[head] * ratio
    module.load_state_dict(state)
    module.eval()
    return module, info["labels"], info


def _check_finite(model_dir: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """NaN or infinite weights (a flipped exponent bit, a run that diverged) give ``nan`` or one
    label for every text, with no error."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{model_dir / WEIGHTS_FILE}: tensor {name!r} holds NaN or infinite "
                             "values")


@dataclass(frozen=True)
class ExportedModel:
    """An exported model ready for inference on (already PII-redacted) text."""

    labels: list[str]
    logits: Callable[[list[str]], torch.Tensor]

    @torch.no_grad()
    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        """(most likely label, its softmax probability) for each text."""
        results = []
        for start in range(0, len(texts), PREDICT_BATCH):
            probs = torch.softmax(self.logits(texts[start : start + PREDICT_BATCH]), dim=-1)
            confidence, index = probs.max(dim=-1)
            results += [(self.labels[i], c) for i, c in zip(index.tolist(), confidence.tolist(),
                                                            strict=True)]
        return results


def feature_scale(model_dir: Path, config: dict) -> float:
    """The length the export's head reads a unit-length embedding at (1 for exports made before
    fedintent scaled features, which do not record it)."""
    scale = config.get("feature_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < math.inf:
        raise ValueError(f"{Path(model_dir) / 'config.json'}: feature_scale must be a positive "
                         f"number, not {scale!r}")
    return float(scale)


def _exported_featurizer(model_dir: Path, config: dict) -> Callable[[list[str]], torch.Tensor]:
    """The features a linear export was trained on. A ``use-multilingual`` export needs the
    encoder version it was trained with: another version's embeddings are not what its head
    learned, so a mismatch is an error, not a silently worse model."""
    if config["model_type"] == NGRAM_MODEL_TYPE:
        from models.ngram import SETTINGS, featurize_with

        if config.get("featurizer") != SETTINGS:  # an edited one could ask for 4 TB, or hang
            raise ValueError(f"{model_dir / 'config.json'}: its featurizer settings are not the "
                             f"ones fedintent's ngram family trains with ({SETTINGS})")
        return partial(featurize_with, settings=SETTINGS)
    from models.use_multilingual import DISTRIBUTION, embed, encoder_version

    encoder = config.get("encoder")
    wanted = encoder.get("version") if isinstance(encoder, dict) else None
    if wanted != encoder_version():
        raise ValueError(f"{model_dir / 'config.json'}: trained on {DISTRIBUTION} {wanted}, "
                         f"but {encoder_version()} is installed: pip install "
                         f"{DISTRIBUTION}=={wanted}")
    return embed


def _check_linear(model_dir: Path, tensors: dict[str, torch.Tensor], num_labels: int,
                  featurize: Callable[[list[str]], torch.Tensor]) -> None:
    """A linear export's weights must map its featurizer's output to one score per label."""
    try:
        width = featurize(["a probe sentence"]).shape[-1]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{model_dir / 'config.json'}: the featurizer settings are unusable "
                         f"({type(err).__name__}: {err})") from None
    weight, bias = tensors["weight"], tensors.get("bias")
    if tuple(weight.shape) != (num_labels, width) or (
            bias is not None and tuple(bias.shape) != (num_labels,)):
        found = [tuple(weight.shape)] + ([] if bias is None else [tuple(bias.shape)])
        raise ValueError(f"{model_dir / WEIGHTS_FILE}: weights of shapes {found} do not map "
                         f"{width} features to the {num_labels} labels of {FRAMEWORK_FILE}")


def load_exported(model_dir: Path) -> ExportedModel:
    """Any family's export, for ``predict``: the transformers model for BERT families, the
    featurizer and linear layer for ``ngram`` and ``use-multilingual`` (which ``pipeline``
    cannot run)."""
    model_dir = Path(model_dir)
    info, config = read_export(model_dir)
    labels = info["labels"]
    if config.get("model_type") not in (*LINEAR_MODEL_TYPES, FedintentBertConfig.model_type):
        raise ValueError(f"{model_dir / 'config.json'}: model_type "
                         f"{config.get('model_type')!r} is not one fedintent exports "
                         f"({', '.join((*LINEAR_MODEL_TYPES, FedintentBertConfig.model_type))})")
    if config["model_type"] in LINEAR_MODEL_TYPES:
        tensors = _read_tensors(model_dir)
        if "weight" not in tensors:
            raise ValueError(f"{model_dir / WEIGHTS_FILE}: no 'weight' tensor")
        if not all(tensor.is_floating_point() for tensor in tensors.values()):
            raise ValueError(f"{model_dir / WEIGHTS_FILE}: weights must be floating point, not "
                             f"{sorted({str(t.dtype) for t in tensors.values()})}")
        _check_finite(model_dir, tensors)
        featurize = _exported_featurizer(model_dir, config)
        _check_linear(model_dir, tensors, len(labels), featurize)
        _check_label_names(model_dir, labels, config)
        scale = feature_scale(model_dir, config)
        return ExportedModel(labels, lambda texts: nn.functional.linear(
            scale * featurize(texts), tensors["weight"], tensors.get("bias")))
    from transformers import AutoTokenizer

    _read_tensors(model_dir, [])  # a clear error for a damaged weights file
    feature_scale(model_dir, config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model, loading = _from_pretrained(model_dir)
    except (OSError, ValueError, ImportError, KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"{model_dir}: its {FedintentBertConfig.model_type} tokenizer or "
                         f"weights cannot be loaded ({type(err).__name__}: "
                         f"{' '.join(str(err).split())})") from None
    _check_loading(model_dir, loading)
    if FILE_DIGESTS not in info:
        _check_unrecorded_tokenizer(model_dir, len(tokenizer), model.config.vocab_size)
    _check_finite(model_dir, model.state_dict())
    if model.config.num_labels != len(labels):
        raise ValueError(f"{model_dir / 'config.json'}: {model.config.num_labels} labels, but "
                         f"{FRAMEWORK_FILE} names {len(labels)}")
    _check_label_names(model_dir, labels, config)
    model.eval()

    def logits(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS,
                          return_tensors="pt")
        return model(**batch).logits

    return ExportedModel(labels, logits)


def _check_label_names(model_dir: Path, labels: list[str], config: dict) -> None:
    """fedintent.json's label names must be config.json's ``id2label``, in order. fedintent.json
    holds the digests, so nothing pins it; config.json is pinned by them, and is what
    ``transformers.pipeline`` labels with. Found in review: two labels swapped in fedintent.json
    mislabelled every prediction, exit 0."""
    id2label = config.get("id2label")
    named = [id2label.get(str(i)) if isinstance(id2label, dict) else None
             for i in range(len(labels))]
    differing = [i for i, label in enumerate(labels) if named[i] != label]
    if differing:
        i = differing[0]
        raise ValueError(f"{model_dir / FRAMEWORK_FILE} names label {i} {labels[i]!r}, but the "
                         f"id2label of {model_dir / 'config.json'} names it {named[i]!r}: one "
                         "of the two was edited, and predictions would be mislabelled; copy the "
                         "export again from where it was written")


def _from_pretrained(model_dir: Path) -> tuple[FedintentBertForSequenceClassification, dict]:
    """The export's model and what loading found. ``from_pretrained`` gives a tensor missing
    from the weights file, or of another shape than config.json's, random values and says so
    only in a table on stderr: silenced here, as the caller refuses the model naming them."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return FedintentBertForSequenceClassification.from_pretrained(
            model_dir, local_files_only=True, output_loading_info=True,
            ignore_mismatched_sizes=True)  # listed in the loading info, not raised without names
    finally:
        hf_logging.set_verbosity(verbosity)


def _check_unrecorded_tokenizer(model_dir: Path, tokens: int, vocab_size: int) -> None:
    """The tokenizer of an export that records no digest of it must be whole. Found in review:
    without tokenizer.json, transformers builds a tokenizer with an empty vocabulary from
    tokenizer_config.json, which reads every text as [UNK] and labels them all alike, exit 0."""
    if not (model_dir / TOKENIZER_FILE).is_file():
        raise ValueError(f"{model_dir}: incomplete model export: no {TOKENIZER_FILE} (copy the "
                         "whole folder)")
    if tokens != vocab_size:
        raise ValueError(f"{model_dir / TOKENIZER_FILE}: {tokens} tokens, but config.json's "
                         f"vocab_size is {vocab_size}: not the tokenizer the model was "
                         "trained with")


def _check_loading(model_dir: Path, loading: dict) -> None:
    """Every tensor of the model must come from the weights file, at config.json's shape, and
    every tensor there must be the model's."""
    mismatched = [f"{key} {tuple(found)} (config.json: {tuple(wanted)})"
                  for key, found, wanted in sorted(loading["mismatched_keys"])]
    found = [("missing tensors", sorted(loading["missing_keys"])),
             ("unexpected tensors", sorted(loading["unexpected_keys"])),
             ("tensors of another shape", mismatched)]
    problems = [f"{kind}: {', '.join(keys[:5])}" + (f" and {len(keys) - 5} more"
                                                    if len(keys) > 5 else "")
                for kind, keys in found if keys]
    if problems:
        raise ValueError(f"{model_dir / WEIGHTS_FILE} does not hold the model config.json "
                         f"describes: {'; '.join(problems)}")

"""``predict`` (classify texts with an exported model) and ``models`` (the model families)."""

import argparse
import csv
import json
import sys
from pathlib import Path

from fedintent.commands import CliError
from fedintent.commands.options import path_argument
from fl_client.data_files import wide_encoding_problem
from fl_client.redaction import redact
from fl_protocol.file_owner import os_error_line, permission_denied
from fl_protocol.wire import RUN_CONFIG_DEFAULTS
from models import model_family_names


def add_parsers(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict",
        help="classify texts with an exported model (OUT/model of fedintent train)",
        description="Classify texts with a model folder written by fedintent train (OUT/model; "
        "docs/EXPORT.md). Each text is first PII-redacted exactly as sites redact their "
        "training text (fl_client/redaction.py: phone numbers, IDs, card numbers, e-mail and "
        "IP addresses, URLs become [PHONE], [ID], ...), so the model sees what it was trained "
        "on. Prints one line per text: label, confidence (softmax probability), redacted text; "
        "an empty TEXT gets no label (skipped). Error messages are redacted too. Options may "
        "come before or after the texts.",
    )
    predict.set_defaults(handler=run_predict, intermixed=predict)
    predict.add_argument("model_dir", type=path_argument, metavar="MODEL_DIR")
    predict.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    predict.add_argument("--file", type=path_argument,
                         help="more texts: one per line (blank lines skipped), or a .csv file "
                         "whose first row is a header: its 'text' column, else its first column")
    predict.add_argument("--json", action="store_true",
                         help="print JSON lines {text, label, confidence} instead (an empty "
                         "text: label and confidence null, skipped: \"empty text\")")

    families = commands.add_parser(
        "models", help="list the model families: what each reads, trains and uploads",
        description="The model families for --model (docs/MODELS.md). A local Hugging Face "
        "BERT checkpoint folder can also be given by path.")
    families.set_defaults(handler=run_list_models)


def run_predict(args: argparse.Namespace) -> int:
    """Every line it prints, errors included, is redacted: a text taken for MODEL_DIR (the
    folder left out) would otherwise be quoted as given."""
    try:
        return _predict(args)
    except CliError as err:
        raise CliError(redact(str(err))) from err


def _predict(args: argparse.Namespace) -> int:
    from models.export import load_exported

    texts = list(args.texts) + (_read_texts_file(args.file) if args.file else [])
    if not texts and not Path(args.model_dir).is_dir():  # found in review: the text was taken
        raise CliError(f"MODEL_DIR {args.model_dir} is not a model folder, and no texts are "
                       "given: pass the model folder first, then TEXT arguments or --file PATH")
    if not texts:
        raise CliError("no texts given: pass TEXT arguments or --file PATH")
    try:
        model = load_exported(args.model_dir)
    except (ValueError, OSError) as err:
        raise CliError(f"{_load_error(err)}{_run_folder_hint(Path(args.model_dir))}") from err
    redacted = [redact(text) for text in texts]
    kept = [text for text in redacted if text.strip()]
    predictions = iter(model.predict(kept) if kept else [])
    for text in redacted:
        print(_output_line(text, next(predictions) if text.strip() else None, args.json))
    return 0


def _load_error(err: ValueError | OSError) -> str:
    """Why the export could not be loaded, in one line: a file this account may not read is
    named with its owner, any other file error without Python's errno text (found in review:
    "[Errno 13] Permission denied: '...'")."""
    if isinstance(err, PermissionError):
        return permission_denied(err.filename, site=False)
    return os_error_line(err) if isinstance(err, OSError) else str(err)


def _run_folder_hint(model_dir: Path) -> str:
    """The "did you mean OUT/model" hint, when ``model_dir`` is a run's folder. It never raises
    (found in review: its own PermissionError named MODEL_DIR/model/fedintent.json, a path never
    given): a folder it cannot look into gets no hint."""
    from models.export import FRAMEWORK_FILE

    inside = model_dir / "model"
    try:
        found = (inside / FRAMEWORK_FILE).is_file()
    except OSError:
        return ""
    return f"; did you mean {inside} (a run's export)?" if found else ""


def _output_line(text: str, prediction: tuple[str, float] | None, as_json: bool) -> str:
    """A redacted text's line: its label and confidence; an empty text gets none, and says so,
    so that line N still answers text N."""
    if as_json:
        label, confidence = prediction or (None, None)
        skipped = {} if prediction else {"skipped": "empty text"}
        return json.dumps({"text": text, "label": label, "confidence": confidence} | skipped,
                          ensure_ascii=False)
    if prediction is None:
        return "-\t-\t(empty text: skipped)"
    label, confidence = prediction
    return f"{label}\t{confidence:.4f}\t{' '.join(text.split())}"


def run_list_models(args: argparse.Namespace) -> int:
    from models import get_model_family

    for name in model_family_names():
        family = get_model_family(name)
        default = " (default)" if name == RUN_CONFIG_DEFAULTS["model"] else ""
        print(f"{name}{default}\n"
              f"  {family.description}\n  reads: {family.languages}\n"
              f"  trained and uploaded each round: {family.exchanged}")
    print("PATH\n  a local Hugging Face BERT checkpoint folder: frozen encoder + trainable "
          "linear head, as minilm-head")
    return 0


def _read_texts_file(path: Path) -> list[str]:
    """Texts of a plain text file (one per line) or a CSV file's 'text' (else first) column.
    A file in UTF-16 or UTF-32 is named as the site-data loader names it (found in review: a
    raw codec error), and so is a CSV row with more fields than the header: its extra fields
    would be dropped without a word (an unquoted comma in a text, found in review). A pipe is
    read (``--file <(command)``); a folder or an unreadable file is named without Python's errno
    text (found in review: "cannot read: [Errno 21] Is a directory: '...'")."""
    if path.is_dir():
        raise CliError(f"--file {path} is a folder, not a text or CSV file")
    try:
        data = path.read_bytes()
    except PermissionError as err:
        raise CliError(f"--file: {permission_denied(path, site=False)}") from err
    except OSError as err:
        raise CliError(f"--file {path}: cannot read: {err.strerror or err}") from err
    problem = wide_encoding_problem(data)
    if problem is not None:
        raise CliError(f"--file {path}: {problem}")
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CliError(f"--file {path}: not UTF-8 text (undecodable bytes at byte {err.start}: "
                       f"{err.reason}); save it as UTF-8") from err
    if path.suffix.lower() != ".csv":
        return [line.strip() for line in content.splitlines() if line.strip()]
    rows = csv.reader(content.splitlines(keepends=True), strict=True)
    try:
        return _csv_texts(path, rows)
    except csv.Error as err:  # found in review: an unterminated quote was read as text
        raise CliError(f"{path}:{rows.line_num}: {err}") from err


def _csv_texts(path: Path, rows) -> list[str]:
    """The 'text' column of ``rows``, a ``csv.reader`` (else the first column, saying so)."""
    header = next(rows, None)
    if not header:
        raise CliError(f"{path}: empty CSV file (it needs a header row)")
    names = [name.strip().lower() for name in header]
    column = names.index("text") if "text" in names else 0
    if "text" not in names:  # found in review: the ids of an "id,utterance" file were read
        print(f"fedintent predict: warning: {path} has no 'text' column: reading its first "
              f"column, {redact(header[0])!r}", file=sys.stderr)
    texts = []
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            raise CliError(f"{path}:{rows.line_num}: {len(row)} fields, more than the header's "
                           f"{len(header)}: quote a text that holds a comma (\"...\")")
        if column >= len(row):
            raise CliError(f"{path}:{rows.line_num}: no value in column {column + 1} "
                           f"({header[column]!r})")
        if row[column].strip():
            texts.append(row[column].strip())
    return texts

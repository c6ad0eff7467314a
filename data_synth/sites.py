"""Non-IID call-center sites written as site folders that the federated clients read.

Each site draws its own profile (intent mix from Dirichlet(alpha), size, language mix, channel
mix and talking style), its own returning customers, and a train/test split by customer so that
no caller appears on both sides. Everything is derived from ``seed``: same arguments, same bytes.
"""

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from data_synth.conversations import CHANNELS, Customer, Style, make_conversation, new_customer
from data_synth.taxonomy import LABELS, LANGUAGES
from fl_protocol.durable_files import write_text_atomic

MIN_SITE_SIZE = 40
_SIZE_SIGMA = 0.5
# Calls per customer: 1, 2, 3 or 4, so that about a quarter of customers call more than once.
_VISITS = (1, 2, 3, 4)
_VISIT_PROBS = (0.75, 0.15, 0.07, 0.03)
_FOLLOW_UP_SAME_INTENT = 0.5
_PERIOD_START = datetime(2026, 1, 5)
_PERIOD_DAYS = 85


@dataclass(frozen=True)
class SiteProfile:
    """What makes one site unlike the others."""

    size: int
    intent_probs: np.ndarray
    language_probs: np.ndarray
    channel_probs: np.ndarray
    style: Style


def draw_profile(
    rng: np.random.Generator, languages: Sequence[str], alpha: float, size: int
) -> SiteProfile:
    """A site's skew: Dirichlet(alpha) intents, lognormal size, its own languages and channels."""
    scale = float(rng.lognormal(-_SIZE_SIGMA**2 / 2, _SIZE_SIGMA))
    language_probs = (
        rng.dirichlet([1.5] * len(languages)) if len(languages) > 1 else np.ones(1)
    )
    return SiteProfile(
        size=max(MIN_SITE_SIZE, round(size * scale)),
        intent_probs=rng.dirichlet([alpha] * len(LABELS)),
        language_probs=language_probs,
        channel_probs=rng.dirichlet([1.0] * len(CHANNELS)),
        style=Style(
            typo_rate=float(rng.uniform(0.01, 0.1)),
            politeness=float(rng.uniform(0.2, 0.8)),
            smalltalk=float(rng.uniform(0.05, 0.4)),
            code_switch=float(rng.uniform(0.0, 0.35)),
            chattiness=float(rng.uniform(0.1, 0.4)),
        ),
    )


def _timestamp(rng: np.random.Generator, channel: str) -> datetime:
    day = _PERIOD_START + timedelta(days=int(rng.integers(_PERIOD_DAYS)))
    hour = int(rng.integers(8, 21)) if channel in ("phone", "chat") else int(rng.integers(24))
    return day + timedelta(hours=hour, minutes=int(rng.integers(60)), seconds=int(rng.integers(60)))


def site_conversations(
    rng: np.random.Generator, site: str, profile: SiteProfile, languages: Sequence[str]
) -> list[dict]:
    """All conversations of one site, in time order, with some customers calling repeatedly."""
    calls: list[tuple[datetime, Customer, str, str]] = []
    number = 0
    while len(calls) < profile.size:
        language = languages[int(rng.choice(len(languages), p=profile.language_probs))]
        customer = new_customer(rng, f"{site}-c{number:04d}", language)
        number += 1
        visits = min(int(rng.choice(_VISITS, p=_VISIT_PROBS)), profile.size - len(calls))
        intent = LABELS[int(rng.choice(len(LABELS), p=profile.intent_probs))]
        channel = CHANNELS[int(rng.choice(len(CHANNELS), p=profile.channel_probs))]
        for _ in range(visits):
            calls.append((_timestamp(rng, channel), customer, intent, channel))
            if rng.random() >= _FOLLOW_UP_SAME_INTENT:
                intent = LABELS[int(rng.choice(len(LABELS), p=profile.intent_probs))]
            if rng.random() < 0.4:
                channel = CHANNELS[int(rng.choice(len(CHANNELS), p=profile.channel_probs))]
    calls.sort(key=lambda call: (call[0], call[1].customer_id))
    return [
        make_conversation(
            rng, f"{site}-{i:05d}", customer, intent, channel,
            when.strftime("%Y-%m-%dT%H:%M:%SZ"), profile.style,
        )
        for i, (when, customer, intent, channel) in enumerate(calls)
    ]


def split_by_customer(
    rng: np.random.Generator, conversations: list[dict], test_fraction: float
) -> tuple[list[dict], list[dict]]:
    """Train/test split with whole customers on one side, test holding ~``test_fraction``."""
    customers = sorted({c["customer_id"] for c in conversations})
    order = rng.permutation(len(customers))
    target = round(test_fraction * len(conversations))
    per_customer = Counter(c["customer_id"] for c in conversations)
    test_customers: set[str] = set()
    in_test = 0
    for index in order:
        if in_test >= target:
            break
        test_customers.add(customers[index])
        in_test += per_customer[customers[index]]
    train = [c for c in conversations if c["customer_id"] not in test_customers]
    test = [c for c in conversations if c["customer_id"] in test_customers]
    return train, test


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


SYNTHETIC_SITE_SIZE = 600
"""Mean conversations per generated site when a run is given no data."""


def write_run_sites(out_dir: Path, n_sites: int, seed: int) -> dict:
    """The synthetic sites a training run without data uses (``fedintent train`` without
    ``--data``, or the ServerApp when its ``data-dir`` is empty): ``SYNTHETIC_SITE_SIZE``
    English conversations per site, from ``seed``."""
    return write_sites(out_dir, n_sites=n_sites, seed=seed, size=SYNTHETIC_SITE_SIZE)


def write_sites(
    out_dir: Path,
    n_sites: int,
    seed: int,
    languages: Sequence[str] = ("en",),
    alpha: float = 0.5,
    size: int = 300,
    test_fraction: float = 0.2,
) -> dict:
    """Write ``labels.txt``, ``manifest.json`` and ``site-NN/{train,test}.jsonl``; return the
    manifest. ``size`` is the mean conversations per site; ``alpha`` the Dirichlet skew."""
    languages = list(dict.fromkeys(languages))
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown or not languages:
        raise ValueError(f"languages must be a non-empty subset of {LANGUAGES}, got {unknown}")
    if n_sites < 1 or size < 1 or alpha <= 0 or not 0 <= test_fraction < 1:
        raise ValueError("need n_sites >= 1, size >= 1, alpha > 0 and 0 <= test_fraction < 1")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "labels.txt", "".join(f"{label}\n" for label in LABELS))
    sites: dict[str, dict] = {}
    for index, site_seed in enumerate(np.random.SeedSequence(seed).spawn(n_sites)):
        rng = np.random.default_rng(site_seed)
        site = f"site-{index:02d}"
        profile = draw_profile(rng, languages, alpha, size)
        conversations = site_conversations(rng, site, profile, languages)
        train, test = split_by_customer(rng, conversations, test_fraction)
        (out_dir / site).mkdir(exist_ok=True)
        write_text_atomic(out_dir / site / "train.jsonl", _jsonl(train))
        write_text_atomic(out_dir / site / "test.jsonl", _jsonl(test))
        sites[site] = {
            "train": len(train),
            "test": len(test),
            "languages": dict(sorted(Counter(c["language"] for c in conversations).items())),
            "label_counts": dict(sorted(Counter(c["intent"] for c in conversations).items())),
        }
    manifest = {
        "generator": {
            "seed": seed,
            "languages": languages,
            "alpha": alpha,
            "size": size,
            "n_sites": n_sites,
            "test_fraction": test_fraction,
        },
        "labels": list(LABELS),
        "sites": sites,
    }
    write_text_atomic(out_dir / "manifest.json", json.dumps(manifest, ensure_ascii=False, indent=2))
    return manifest

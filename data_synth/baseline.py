"""A TF-IDF + logistic-regression yardstick for how hard the synthetic intent task is.

If this bag-of-n-grams baseline scored ~100%, the data would be too easy to tell federated or
private training apart from anything else; if it scored near chance, the data would be noise.
scikit-learn is imported lazily, so only the commands that need it pay for the import.
"""

import json
from pathlib import Path


def _intent_texts(out_dir: Path, split: str, language: str | None) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for path in sorted(Path(out_dir).glob(f"site-*/{split}.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if language is None or record["language"] == language:
                texts.append(record["turns"][record["intent_turn"]]["text"])
                labels.append(record["intent"])
    return texts, labels


def tfidf_accuracy(
    train_texts: list[str],
    train_labels: list,
    test_texts: list[str],
    test_labels: list,
    words: bool = True,
    seed: int = 0,
) -> float:
    """Test accuracy of TF-IDF + logistic regression, trained pooled and non-private: word 1-2
    grams, or (``words=False``, for text that is not space-separated, such as Chinese)
    character 1-3 grams. The yardstick of both the synthetic data and ``fedintent bench``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    analyzer, ngrams = ("word", (1, 2)) if words else ("char", (1, 3))
    model = make_pipeline(
        TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True),
        LogisticRegression(C=10.0, max_iter=2000, random_state=seed),
    )
    model.fit(train_texts, train_labels)
    return float(model.score(test_texts, test_labels))


def tfidf_baseline_accuracy(out_dir: Path, language: str | None = None) -> float:
    """``tfidf_accuracy`` of generated sites: trained on every site's train split and scored on
    every site's test split, using the intent turn's text only; English by words, Chinese (or
    a mix) by characters. ``language`` restricts both splits to one language.
    """
    train_texts, train_labels = _intent_texts(out_dir, "train", language)
    test_texts, test_labels = _intent_texts(out_dir, "test", language)
    if not train_texts or not test_texts:
        raise ValueError(f"no {language or 'any'}-language conversations in {out_dir}")
    return tfidf_accuracy(train_texts, train_labels, test_texts, test_labels,
                          words=language == "en")

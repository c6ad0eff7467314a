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


def tfidf_baseline_accuracy(out_dir: Path, language: str | None = None) -> float:
    """Accuracy of TF-IDF + logistic regression trained centrally on every site's train split
    and scored on every site's test split, using the intent turn's text only.

    English uses word 1-2 grams; Chinese (or a mix) uses character 1-3 grams, since Chinese is
    not space-separated. ``language`` restricts both splits to one language.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    train_texts, train_labels = _intent_texts(out_dir, "train", language)
    test_texts, test_labels = _intent_texts(out_dir, "test", language)
    if not train_texts or not test_texts:
        raise ValueError(f"no {language or 'any'}-language conversations in {out_dir}")
    if language == "en":
        vectorizer = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)
    else:
        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
    classifier = LogisticRegression(C=10.0, solver="saga", max_iter=1000, random_state=0)
    model = make_pipeline(vectorizer, classifier)
    model.fit(train_texts, train_labels)
    return float(model.score(test_texts, test_labels))

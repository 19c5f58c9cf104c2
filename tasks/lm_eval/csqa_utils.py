"""CommonsenseQA's original files (as in the mirror) mapped to the hub schema that
lm-eval's commonsense_qa task reads, so both modes score the same prompts."""


def process_docs(dataset):
    def to_hub(doc):
        q = doc["question"]
        return {"id": doc["id"], "question": q["stem"], "question_concept": q["question_concept"],
                "choices": {"label": [c["label"] for c in q["choices"]],
                            "text": [c["text"] for c in q["choices"]]},
                "answerKey": doc["answerKey"]}
    return dataset.map(to_hub, remove_columns=dataset.column_names)

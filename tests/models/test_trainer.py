"""transformers' Trainer trains, evaluates (metrics computed from the logits, so evaluation must get
them) and saves our models, which then reload with our from_pretrained: CPU, tiny in-test data.

Our models are not transformers' PreTrainedModel, so Trainer saves their state dict alone
(model.safetensors, no config.json; it says so in its log): the reload passes the config, or the
config is saved beside the weights.
"""
import numpy as np
import pytest
import torch

from reformer_kernels import models

from .hf_reference import TINY, transformers

pytestmark = pytest.mark.slow

SEQ_LEN, ROWS, STEPS = 16, 24, 4


class Rows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def arguments(tmp_path, steps=STEPS):
    return transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=steps, per_device_train_batch_size=4, per_device_eval_batch_size=5,
        learning_rate=3e-3, save_strategy="steps", save_steps=STEPS, logging_steps=1, report_to=[], use_cpu=True,
        dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )


def lm_data(generator):
    # A learnable sequence: each token is the previous one + 1 (mod 50), from a random start.
    starts = torch.randint(0, 50, (ROWS, 1), generator=generator)
    ids = (starts + torch.arange(SEQ_LEN)) % 50
    return [{"input_ids": row, "attention_mask": torch.ones(SEQ_LEN, dtype=torch.long), "labels": row} for row in ids]


def classification_data(generator):
    ids = torch.randint(0, 50, (ROWS, SEQ_LEN), generator=generator)
    labels = (ids[:, 0] >= 25).long()  # the class is read at the first position, the one the head sees
    return [{"input_ids": row, "labels": label} for row, label in zip(ids, labels)]


def next_token_accuracy(eval_pred):
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    return {"accuracy": float((logits[:, :-1].argmax(-1) == labels[:, 1:]).mean())}


def class_accuracy(eval_pred):
    return {"accuracy": float((eval_pred.predictions.argmax(-1) == eval_pred.label_ids).mean())}


@pytest.mark.parametrize("class_name", ["ReformerModelWithLMHead", "ReformerForSequenceClassification"])
def test_trainer_trains_evaluates_saves_and_we_reload(tmp_path, class_name):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    lm = class_name == "ReformerModelWithLMHead"
    config = models.ReformerConfig(**dict(TINY, attn_layers=["local", "lsh"], is_decoder=lm, hash_seed=1))
    model = getattr(models, class_name)(config)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    data = lm_data(generator) if lm else classification_data(generator)
    train, evaluation = Rows(data[:16]), Rows(data[16:])
    trainer = transformers.Trainer(
        model=model, args=arguments(tmp_path), train_dataset=train, eval_dataset=evaluation,
        compute_metrics=next_token_accuracy if lm else class_accuracy,
    )
    result = trainer.train()
    assert result.global_step == STEPS and np.isfinite(result.training_loss)
    assert any(not torch.equal(initial[k], v) for k, v in model.state_dict().items())

    metrics = trainer.evaluate()
    # The metric Trainer computed from the logits it gathered equals ours from the model in eval mode.
    batch = {k: torch.stack([row[k] for row in evaluation.rows]) for k in evaluation.rows[0]}
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    expected = (next_token_accuracy if lm else class_accuracy)(
        transformers.EvalPrediction(predictions=out.logits.numpy(), label_ids=batch["labels"].numpy())
    )
    assert metrics["eval_accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["eval_loss"] == pytest.approx(out.loss.item(), rel=1e-5)

    trainer.save_model(str(tmp_path / "final"))
    reloaded = getattr(models, class_name).from_pretrained(tmp_path / "final", config=model.config)
    checkpoint = tmp_path / "run" / f"checkpoint-{STEPS}"
    model.config.save_pretrained(checkpoint)
    from_checkpoint = getattr(models, class_name).from_pretrained(checkpoint)
    for loaded in (reloaded, from_checkpoint):
        assert loaded.state_dict().keys() == model.state_dict().keys()
        for key, tensor in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], tensor), key
        with torch.no_grad():
            assert torch.equal(loaded(**batch).logits, out.logits)

    # Trainer resumes a fresh model from the checkpoint (its load_state_dict, our config.json read by
    # transformers' config class) and trains on.
    resumed = transformers.Trainer(
        model=getattr(models, class_name)(config), args=arguments(tmp_path, steps=STEPS + 2), train_dataset=train
    )
    result = resumed.train(resume_from_checkpoint=str(checkpoint))
    assert result.global_step == STEPS + 2 and np.isfinite(result.training_loss)

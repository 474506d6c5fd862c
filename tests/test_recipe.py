from pathlib import Path

import pytest
from conftest import ROOT, assert_clean_error, edgecnn
from edgecnn.errors import EdgeCNNError
from edgecnn.recipe import Recipe, load_recipe


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["quickstart", "fashion_mnist"])
def test_shipped_recipes_load(name):
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    assert recipe.name == name


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("train: {epoch: 3}", ["train.epoch", "did you mean 'epochs'"]),
        ("trian: {epochs: 3}", ["trian", "did you mean 'train'"]),
        ("data: {img_sise: 32}", ["data.img_sise", "did you mean 'img_size'"]),
        ("train: {epochs: ten}", ["train.epochs", "expected an integer", "'ten'"]),
        ("train: {lr: fast}", ["train.lr", "expected a number"]),
        ("train: {optimizer: adam}", ["train.optimizer", "'sgd' or 'adamw'"]),
        ("train: {amp: 3}", ["train.amp", "true/false"]),
        ("data: {augment: flip}", ["data.augment", "a list of a string"]),
        ("data: {augment: [flop]}", ["data.augment", "did you mean 'flip'"]),
        ("data: [1, 2]", ["data", "expected a mapping"]),
        ("train: {epochs: 0}", ["train.epochs must be positive"]),
        ("data: {batch_size: -4}", ["data.batch_size must be positive"]),
        ("data: {dataset: imagefolder:/no/such/dir}", ["folder not found"]),
        ("data: {dataset: mnist}", ["unknown dataset 'mnist'"]),
        ("model: {name: resnet9}", ["unknown model 'resnet9'", "did you mean 'resnet8'"]),
        ("model: {weights: /no/such/file.pth}", ["model.weights: file not found"]),
        ("data: {mean: [0.5, 0.5]}", ["data.mean must be three numbers"]),
        ("train: {epochs: 3\n  lr: [", ["YAML syntax error at line"]),
    ],
)
def test_invalid_recipes_name_the_key(tmp_path, text, fragments):
    path = write(tmp_path, text)
    with pytest.raises(EdgeCNNError) as err:
        load_recipe(path)
    message = str(err.value)
    assert message.startswith(str(path))
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_defaults_and_name_from_file(tmp_path):
    recipe = load_recipe(write(tmp_path, "train: {epochs: 2}\n"))
    assert recipe.name == "r" and recipe.train.epochs == 2 and recipe.data.dataset == "digits"
    assert isinstance(recipe.train.lr, float)


def test_empty_recipe_is_all_defaults(tmp_path):
    assert load_recipe(write(tmp_path, "")).model.name == Recipe().model.name


def test_section_hash_follows_its_sections_only():
    a, b = Recipe(), Recipe()
    b.train.epochs += 1
    assert a.section_hash("data", "model") == b.section_hash("data", "model")
    assert a.section_hash("train") != b.section_hash("train")
    assert a.hash != b.hash


def test_cli_reports_recipe_errors_in_one_line(tmp_path):
    path = write(tmp_path, "train:\n  epoch: 3\n")
    assert_clean_error(edgecnn("run", path, "--out", tmp_path / "o"), "train.epoch", "did you mean 'epochs'")
    assert not (tmp_path / "o").exists()

"""Toy models of superposition: the models, their sparse data, many instances trained as one
program, and the analyses of what they represent (see each module's docstring)."""

from jaxinterp.models.toy.data import (
    FixedDataset,
    OnlineFeatures,
    check_importance,
    check_probabilities,
    cipher_words,
    fixed_datasets,
    geometric_importance,
    sample_features,
    sample_features_two_draws,
)
from jaxinterp.models.toy.geometry import (
    POLYTOPES,
    STICKY_VALUES,
    FeatureGroup,
    dimensions_per_feature,
    feature_dimensionality,
    feature_geometry,
    feature_norms,
    feature_vectors,
    n_represented,
    neighbour_angles,
    superposition,
)
from jaxinterp.models.toy.model import (
    VARIANTS,
    Toy,
    ToyConfig,
    ToyMLP,
    ToyModel,
    importance_weighted_mse,
    init_toy,
    init_toys,
    target,
)
from jaxinterp.models.toy.step import loss_and_grad, make_instance_step, tied_loss_and_grad
from jaxinterp.models.toy.train import (
    ToyRun,
    ToyTrainConfig,
    data_key_words,
    evaluate_toys,
    instance_keys,
    make_chunk,
    train_toys,
)

__all__ = [
    "POLYTOPES", "STICKY_VALUES", "VARIANTS", "FeatureGroup", "FixedDataset", "OnlineFeatures",
    "Toy", "ToyConfig", "ToyMLP", "ToyModel", "ToyRun", "ToyTrainConfig", "check_importance", "cipher_words", "data_key_words",
    "check_probabilities", "dimensions_per_feature", "evaluate_toys", "feature_dimensionality",
    "feature_geometry", "feature_norms", "feature_vectors", "fixed_datasets",
    "geometric_importance", "importance_weighted_mse", "loss_and_grad", "init_toy", "init_toys", "instance_keys",
    "make_chunk", "make_instance_step", "n_represented", "neighbour_angles", "sample_features",
    "sample_features_two_draws", "superposition", "target", "tied_loss_and_grad", "train_toys",
]

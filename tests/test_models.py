"""The model registry, output shapes and the lecture's parameter counts."""

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab.engine.config import MODELS as REGISTRY
from cnnlab.engine.models import build_model, count_parameters, get_spec
from cnnlab.errors import CnnlabError


def test_lecture_parameter_counts():
    assert count_parameters(build_model("simple_cnn")) == 206_922
    assert count_parameters(build_model("mlp")) == 669_706


def test_simple_cnn_layers_are_the_lectures():
    m = build_model("simple_cnn")
    convs = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d)]
    linears = [l for l in m.modules() if isinstance(l, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == \
        [(1, 16, (3, 3), (1, 1)), (16, 32, (3, 3), (1, 1))]
    assert [(l.in_features, l.out_features) for l in linears] == [(1568, 128), (128, 10)]
    assert sum(isinstance(l, torch.nn.MaxPool2d) for l in m.modules()) == 2


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_model_maps_a_batch_to_ten_logits(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


def test_registry_rejects_unknown_names_with_the_choices():
    with pytest.raises(CnnlabError, match="unknown model 'resnet'; choose one of: simple_cnn, mlp"):
        get_spec("resnet")


def test_fast_cnn_flattens_the_same_features_in_either_memory_layout():
    # fast_cnn flattens in channels-last order (a free view in training); NCHW inference, ONNX and
    # TorchScript exports take the same weights and must give the same logits.
    torch.manual_seed(0)
    model = build_model("fast_cnn").eval()
    assert count_parameters(model) == 32_394
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        nchw = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, nchw, rtol=1e-5, atol=1e-5)
    # and the order really is height, width, channel: the classifier's weight for feature
    # (h=0, w=0, c=1) is column 1, not column 49.
    features = model.features(x)
    flat = model.classifier[0](features)
    assert torch.equal(flat[:, 1], features[:, 1, 0, 0]) and torch.equal(flat[:, 32], features[:, 0, 0, 1])


def test_fast_cnn_first_layer_is_the_whitened_patch_pca_of_the_data(data_dir):
    """init_from_data: 8 principal directions of the 5x5 patches, scaled to unit variance, and their
    negatives; checked against patches cut out and decomposed independently with numpy."""
    x = cnnlab.engine.data.normalize(cnnlab.engine.data.load("mnist", "train", data_dir).images[:2000], 0.5, 0.5)
    model = build_model("fast_cnn")
    model.init_from_data(x)
    w = model.features[0].weight.detach().double().reshape(16, 25).numpy()
    assert np.array_equal(w[8:], -w[:8]) and not model.features[0].bias.any()
    assert not any(p.requires_grad for p in model.features[0].parameters())
    # Every 5x5 window the conv sees: stride 2, zero padding 2, 14x14 positions per image.
    padded = np.pad(x[:, 0].double().numpy(), ((0, 0), (2, 2), (2, 2)))
    patches = np.stack([padded[:, i:i + 27:2, j:j + 27:2] for i in range(5) for j in range(5)], -1).reshape(-1, 25)
    assert len(patches) == 2000 * 14 * 14
    centred = patches - patches.mean(0)
    variances = np.linalg.eigvalsh(centred.T @ centred / len(centred))[::-1][:8]
    responses = centred @ w[:8].T
    response_cov = responses.T @ responses / len(responses)
    # Decorrelated: the 8 responses are uncorrelated, each with variance l / (sqrt(l) + eps)^2.
    assert np.abs(response_cov - np.diag(np.diag(response_cov))).max() < 1e-4
    np.testing.assert_allclose(np.diag(response_cov), variances / (np.sqrt(variances) + 1e-2) ** 2, rtol=1e-4)
    assert np.diag(response_cov).min() > 0.8


def test_best_ensemble_models_parameter_counts_by_hand():
    # strided_cnn: bias-free convs 1-32 3x3, 32-32 3x3, 32-32 5x5, 32-64 3x3, 64-64 3x3, 64-64 5x5,
    # 64-128 4x4; BatchNorm weight and bias per channel; Linear 128 -> 10.
    convs = 1 * 32 * 9 + 32 * 32 * 9 + 32 * 32 * 25 + 32 * 64 * 9 + 64 * 64 * 9 + 64 * 64 * 25 + 64 * 128 * 16
    assert count_parameters(build_model("strided_cnn")) == convs + 2 * (3 * 32 + 3 * 64 + 128) + 1_290 == 325_994
    # kernel5_cnn: 1-32 5x5, 32-64 5x5, 64-128 3x3, 128-128 3x3, BatchNorm, Linear 128 -> 10.
    convs = 1 * 32 * 25 + 32 * 64 * 25 + 64 * 128 * 9 + 128 * 128 * 9
    assert count_parameters(build_model("kernel5_cnn")) == convs + 2 * (32 + 64 + 128 + 128) + 1_290 == 275_178
    # wide5_cnn: the same at 1.5x width, 1-48 5x5, 48-96 5x5, 96-192 3x3, 192-192 3x3, Linear 192 -> 10.
    convs = 1 * 48 * 25 + 48 * 96 * 25 + 96 * 192 * 9 + 192 * 192 * 9
    assert count_parameters(build_model("wide5_cnn")) == convs + 2 * (48 + 96 + 192 + 192) + 1_930 == 617_050


def test_strided_cnn_downsamples_by_strided_convs_not_pooling():
    model = build_model("strided_cnn").eval()
    assert not any(isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for m in model.modules())
    sizes, x = [], torch.zeros(2, 1, 28, 28)
    for layer in model.features:
        x = layer(x)
        if isinstance(layer, torch.nn.Conv2d):
            sizes.append(x.shape[-1])
    assert sizes == [26, 24, 12, 10, 8, 4, 1]

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from common import plots, training  # noqa: E402


def test_figures_have_titles_and_labels():
    fig = plots.show_images(torch.randn(5, 1, 28, 28), labels=[0, 1, 2, 3, 4], predictions=[0, 1, 2, 3, 5],
                            title="five images")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:4] == ["T-shirt/top", "Trouser", "Pullover", "Dress"]
    assert titles[4] == "Sandal\n(true: Coat)"
    history = training.History([1.0, 0.5], [0.5, 0.8], [1.1, 0.6], [0.4, 0.7], [1.0, 1.0])
    fig = plots.plot_history({"a": history, "b": history})
    assert [ax.get_xlabel() for ax in fig.axes] == ["epoch", "epoch"]
    assert plots.show_filters(torch.randn(6, 1, 5, 5)).axes
    assert plots.show_feature_maps(torch.randn(1, 6, 12, 12)).axes
    plt.close("all")


def test_bad_shapes_are_explained():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        plots.show_images(torch.zeros(2, 2, 5, 5))
    with pytest.raises(ValueError, match=r"\(C_out, C_in, kH, kW\)"):
        plots.show_filters(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="one image"):
        plots.show_feature_maps(torch.zeros(2, 3, 4, 4))

import nbformat
import pytest

from common import execute


def test_clean_keeps_results_and_drops_noise():
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3"}, "widgets": {"state": {}}, "toc": {}}
    cell = nbformat.v4.new_code_cell("fit(...)")
    cell.metadata = {"execution": {"iopub.status.busy": "2026"}, "tags": ["keep"]}
    bar = nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "abc"},
        "text/plain": "HBox(children=(HTML(value=''), FloatProgress(value=0.0, max=235.0)))"})
    explorer = nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "def"},
        "text/plain": "interactive(children=(Dropdown(...),))"})
    tqdm_bar = nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "ghi"},
        "text/plain": "Sigmoid epoch 1/3:   0%|          | 0/469 [00:00<?, ?it/s]"})
    line = nbformat.v4.new_output("stream", name="stdout", text="epoch 1/3: train loss 0.5\n")
    cell.outputs = [bar, line, tqdm_bar, explorer]
    nb.cells = [cell]
    execute.clean(nb)
    assert set(nb.metadata) == {"kernelspec", "language_info"}
    assert nb.cells[0].metadata == {"tags": ["keep"]}
    assert nb.cells[0].outputs == [line, explorer]


def test_refuses_to_store_a_quick_run(monkeypatch, tmp_path):
    monkeypatch.setenv("CVM_QUICK", "1")
    with pytest.raises(SystemExit):
        execute.main([str(tmp_path / "x.ipynb")])

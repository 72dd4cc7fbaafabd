"""Background selection: stratified draws of background cells."""

import numpy as np
import pandas as pd
import pytest

import scexplain as sx
from scexplain._inputs import stratified_indices


@pytest.mark.parametrize("n", [1, 3, 9, 10, 11, 50, 144])
def test_stratified_draw_has_n_distinct_rows_and_every_group_it_can(n):
    groups = pd.Categorical(np.repeat(np.arange(10), np.arange(10, 20)))  # 145 cells, groups of 10 … 19
    idx = stratified_indices(groups, len(groups), n, 0)
    assert len(idx) == n == len(np.unique(idx)) and np.all(np.diff(idx) > 0)
    codes = np.asarray(groups.codes)[idx]
    assert len(np.unique(codes)) == min(n, 10)  # every group once there is room, else the n largest groups
    if n < 10:
        assert set(codes) == set(range(10 - n, 10))
    else:  # proportional: no group is more than one cell off its share
        share = np.bincount(np.asarray(groups.codes)) / len(groups) * n
        assert np.all(np.abs(np.bincount(codes, minlength=10) - share) <= 1)
    np.testing.assert_array_equal(idx, stratified_indices(groups, len(groups), n, 0))


def test_fewer_background_cells_than_groups_runs(toy_adata):
    import torch

    toy_adata = toy_adata.copy()  # the fixture is shared by the session
    n_groups = toy_adata.obs["cell_type"].nunique()
    model = torch.nn.Sequential(torch.nn.Linear(toy_adata.n_vars, n_groups))
    sx.tl.deep_shap(toy_adata, model, groupby="cell_type", layer="lognorm", n_background=n_groups - 1, progress=False)
    assert len(toy_adata.uns["deep_shap"]["params"]["background_obs_indices"]) == n_groups - 1

"""Edges of the run and the API where sentence-transformers users expect a result or one clear message.

* losses.matryoshka under distillation: 2-D float labels (teacher embeddings) are cut, never normalized,
  equal to ST's MatryoshkaLoss(MSELoss).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minisbert import losses as L


# ----------------------------------------------------------------------------------------------
# matryoshka distillation


def test_matryoshka_cuts_teacher_labels_without_normalizing_them_as_st():
    st = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    from test_losses import ColumnModel, st_loss

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 16, generator=g), 3 * torch.randn(6, 16, generator=g)  # teacher far from unit norm
    dims, weights = [16, 8, 4], [1.0, 0.5, 0.25]

    def mse(embeddings, labels):
        return F.mse_loss(embeddings, labels)

    got = L.matryoshka(mse, dims, weights)(student, teacher)
    naive = sum(w * F.mse_loss(F.normalize(student[:, :d], dim=-1), teacher[:, :d]) for d, w in zip(dims, weights))
    torch.testing.assert_close(got, naive)
    model = ColumnModel([student])
    ref = st.MatryoshkaLoss(model, st.MSELoss(model), dims, weights)
    torch.testing.assert_close(got, st_loss(ref, [student], teacher).float())

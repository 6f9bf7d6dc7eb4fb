"""Figures: the static figures by subject (:mod:`.figures`: embeddings, training curves, the
study's comparison and sweep figures, each written as PNG/PDF), the interactive HTML page
(:mod:`.page`, bokeh) and the label colours both share (:mod:`.palette`, which imports nothing
of the package).  ``factembed.plot.plot_embedding(...)`` and the other figure functions are
re-exported here.
"""

from .figures import (draw_embedding, interactive, plot_accuracy_by_dim, plot_distance_scatter,
                      plot_embedding, plot_legend_sheet, plot_speed_by_gene_dim, plot_sweep_density_grid,
                      plot_sweep_heatmap, plot_sweep_scatter_grid, plot_train_test_embedding,
                      plot_training_curves, plot_transform, sweep_axis_limits)
from .palette import label_colors, label_palette, order_labels, ordered_labels

__all__ = ["draw_embedding", "interactive", "plot_accuracy_by_dim", "plot_distance_scatter", "plot_embedding",
           "plot_legend_sheet", "plot_speed_by_gene_dim", "plot_sweep_density_grid", "plot_sweep_heatmap",
           "plot_sweep_scatter_grid", "plot_train_test_embedding", "plot_training_curves", "plot_transform",
           "sweep_axis_limits", "label_colors", "label_palette", "order_labels", "ordered_labels"]

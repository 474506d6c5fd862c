"""Workflows: the steps a verb or a recipe stage runs across several packages (train → prune → export →
bench). The libraries below (data, models, train, prune, export, bench, runtime) never import from here, so
each stays usable on its own and the import graph has one direction."""

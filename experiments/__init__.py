"""Experiment configs (`get_config(arg=None)`); a package so that one experiment can build on
another's sections (`from experiments import quickstart`)."""

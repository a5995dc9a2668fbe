"""Structured logging: the library's `artlens.*` loggers write through the handler's
Powertools Logger, so every line is JSON and carries the request's correlation id."""

from __future__ import annotations

import logging

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers


def handler_logger(service: str) -> Logger:
    """A handler's Powertools Logger, with the library's loggers writing through it."""
    logger = Logger(service=service)
    route_library_logs(logger)
    return logger


def route_library_logs(logger: Logger) -> None:
    names = {
        name for name in logging.root.manager.loggerDict
        if name == "artlens" or name.startswith("artlens.")
    }
    if names:
        copy_config_to_registered_loggers(source_logger=logger, include=names)

"""Shared training machinery: device, seeding, tensor-resident data, models, evaluation, train loop.

Everything here may import torch; plugin modules import it inside the functions that run a cell.
"""

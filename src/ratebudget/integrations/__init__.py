"""Integrations with LLM providers' HTTP APIs.

``ratebudget.integrations.usage`` reads requests and responses (no extra
dependency); ``ratebudget.integrations.prices`` turns usage into exact USD
and needs ``pip install 'ratebudget[prices]'``.
"""

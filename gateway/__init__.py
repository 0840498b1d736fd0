"""The stateless gateway worker. It imports nothing from Django: it reads signed config
revisions from Redis (gateway/config.py defines their schema) and serves the OpenAI API."""

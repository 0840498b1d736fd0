"""The provider simulator: stands in for OpenAI, Azure OpenAI and Anthropic, which this
machine cannot reach. It speaks their wire formats with configurable latency, token rate and
faults, set per model through its control endpoint."""

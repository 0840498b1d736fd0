"""Building blocks for tests that need credentials, deployments and routes."""

from decimal import Decimal

from keys.services import create_credential
from sla.services import create_deployment, create_route


def make_routes(org, actor, *, base_url: str = "http://127.0.0.1:9/v1", aliases=("gpt-4o", "claude-sonnet", "o1")):
    """One simulator-style credential, one deployment per alias, one route per alias."""
    credential = create_credential(
        actor=actor,
        org=org,
        name="Simulator",
        provider="openai_compatible",
        base_url=base_url,
        secrets={"api_key": "sk-simulator-test-0000"},
    )
    routes = {}
    for alias in aliases:
        deployment = create_deployment(
            actor=actor,
            org=org,
            name=f"{alias} deployment",
            credential=credential,
            upstream_model=alias,
            input_price_per_mtok=Decimal("2.50"),
            output_price_per_mtok=Decimal("10.00"),
        )
        routes[alias] = create_route(actor=actor, org=org, alias=alias, deployments=[deployment])
    return routes

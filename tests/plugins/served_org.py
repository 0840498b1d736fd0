import pytest

from fleet import services
from keys.services import issue_key
from tests.factories import make_routes


@pytest.fixture
def served(org, team, actors, users, provider_simulator, clean_redis, fresh_key_ring):
    """An org whose routes point at the simulator, a caller key, and the config published."""
    routes = make_routes(
        org,
        actors["admin"],
        base_url=f"{provider_simulator.url}/v1",
        aliases=("gpt-4o", "text-embedding-3-small", "claude-sonnet"),
    )
    key, plaintext = issue_key(actor=actors["admin"], team=team, name="sdk", user=users["developer"])
    services.publish_pending()
    return {"routes": routes, "key": key, "plaintext": plaintext, "team": team}

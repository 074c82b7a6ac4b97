def test_tiny_registry_builds_and_searches(tiny_registry):
    stats = tiny_registry.stats()
    assert stats["models"] == 11
    assert stats["resolved_images"] >= 8
    hits = tiny_registry.search("watercolor fox in a misty forest", types=["checkpoint"], limit=3)
    assert hits[0].version.model_name == "Aquarelle"
    # NSFW excluded by default
    assert all(not h.version.nsfw for h in tiny_registry.search("photorealistic", limit=20))

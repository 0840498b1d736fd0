def event_list(request, org_slug):
    pass

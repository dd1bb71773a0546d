def workspace(request):
    """Expose the workspace in scope and the user's memberships (for the switcher) to templates."""
    memberships = []
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        from crm_site.models import Membership

        memberships = list(
            Membership.objects.filter(user=user, workspace__is_active=True).select_related("workspace")
        )
    return {
        "workspace": getattr(request, "workspace", None),
        "membership": getattr(request, "membership", None),
        "user_memberships": memberships,
    }

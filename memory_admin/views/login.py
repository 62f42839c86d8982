"""The console's login page, which says so (429, Retry-After) when the throttle refuses."""

from __future__ import annotations

from django.contrib.auth import views as auth_views


class LoginView(auth_views.LoginView):
    redirect_authenticated_user = True

    def form_invalid(self, form):
        seconds = getattr(self.request, "login_locked_for", 0)
        if not seconds:
            return super().form_invalid(form)
        response = self.render_to_response(self.get_context_data(form=form, locked_minutes=-(-seconds // 60)))
        response.status_code = 429
        response["Retry-After"] = str(seconds)
        return response

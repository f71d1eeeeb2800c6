package api

import (
	"errors"
	"net/http"
	"strings"

	"github.com/sandfleet/sandfleet/internal/auth"
)

// Replies to a request without a good token. They say what to send and
// never echo what was sent: a wrong token is often a right one mistyped,
// or someone else's.
const (
	msgNoToken = "authentication required: send the header Authorization: Token <key> " +
		"(a key is made with sandfleet token create NAME; the sandfleet CLI sends --token or $SANDFLEET_TOKEN)"
	msgBadScheme = "authentication required: the Authorization header must be Token <key>"
	msgBadToken  = "invalid token: send Authorization: Token <key> with a key made by sandfleet token create and not revoked"
	msgNoTokens  = "authentication unavailable: the daemon cannot use its tokens file (auth.tokens_file); its log says why"
)

// authorized checks the request's token; when it is refused, the reply has
// been written (401, or 503 while the tokens file is unusable).
func (s *Server) authorized(w http.ResponseWriter, r *http.Request) bool {
	if s.tokens == nil {
		return true
	}
	refuse := func(code int, msg string) bool {
		// RFC 9110: a 401 names the scheme it wants.
		w.Header().Set("WWW-Authenticate", `Token realm="sandfleet"`)
		fail(w, code, msg)
		return false
	}
	h := strings.TrimSpace(r.Header.Get("Authorization"))
	if h == "" {
		return refuse(http.StatusUnauthorized, msgNoToken)
	}
	// CAPE's clients send "Token <key>" (Django REST framework's
	// TokenAuthentication, which reads the scheme case-insensitively).
	// "Bearer" is accepted too, for generic HTTP clients: it is the same
	// key, checked the same way.
	scheme, key, _ := strings.Cut(h, " ")
	key = strings.TrimSpace(key)
	if (!strings.EqualFold(scheme, "Token") && !strings.EqualFold(scheme, "Bearer")) || key == "" {
		s.log.Warn("api: request refused: Authorization is not Token <key>", "remote", r.RemoteAddr, "path", r.URL.Path)
		return refuse(http.StatusUnauthorized, msgBadScheme)
	}
	if _, err := s.tokens.Check(key); err != nil {
		if !errors.Is(err, auth.ErrUnknownKey) {
			return refuse(http.StatusServiceUnavailable, msgNoTokens)
		}
		s.log.Warn("api: request refused: unknown token", "remote", r.RemoteAddr, "path", r.URL.Path)
		return refuse(http.StatusUnauthorized, msgBadToken)
	}
	return true
}

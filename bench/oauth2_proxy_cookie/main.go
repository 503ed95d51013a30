// Mints a valid oauth2-proxy session cookie (cookie session store) for bench/auth_check.py, using
// oauth2-proxy's own packages, so that its /oauth2/auth can be loaded with signed-in requests.
//
//	oauth2-proxy-cookie <cookie-secret> <cookie-name> <user> <email>
package main

import (
	"fmt"
	"os"
	"time"

	sessionsapi "github.com/oauth2-proxy/oauth2-proxy/v7/pkg/apis/sessions"
	"github.com/oauth2-proxy/oauth2-proxy/v7/pkg/encryption"
)

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: oauth2-proxy-cookie <cookie-secret> <cookie-name> <user> <email>")
		os.Exit(2)
	}
	secret, name, user, email := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	cipher, err := encryption.NewCFBCipher(encryption.SecretBytes(secret))
	if err != nil {
		panic(err)
	}
	now := time.Now()
	expires := now.Add(time.Hour)
	ss := &sessionsapi.SessionState{User: user, Email: email, PreferredUsername: user, CreatedAt: &now,
		ExpiresOn: &expires}
	value, err := ss.EncodeSessionState(cipher, true)
	if err != nil {
		panic(err)
	}
	signed, err := encryption.SignedValue(secret, name, value, now)
	if err != nil {
		panic(err)
	}
	fmt.Println(signed)
}

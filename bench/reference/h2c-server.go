// A reference h2c server outside Node: answers every POST with a fixed chat completion LATENCY after it arrived.
// Driven by lote's bare client (bench/support/bare-client-child.ts) it shows what a Node HTTP/2 client reaches when
// the server costs next to nothing. See README.md here; not part of `npm run bench` or CI.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
)

const answer = `{"id":"chatcmpl-ref","object":"chat.completion","created":1,"model":"bench-slow","choices":[{"index":0,"message":{"role":"assistant","content":"lorem ipsum dolor sit amet"},"finish_reason":"stop"}],"usage":{"prompt_tokens":50,"completion_tokens":64,"total_tokens":114}}`

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: h2c-server PORT LATENCY   (LATENCY like 50ms)")
		os.Exit(2)
	}
	latency, err := time.ParseDuration(os.Args[2])
	if err != nil {
		panic(err)
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		due := time.NewTimer(latency)
		io.Copy(io.Discard, r.Body)
		<-due.C
		w.Header().Set("content-type", "application/json")
		w.Header().Set("x-request-id", "ref")
		io.WriteString(w, answer)
	})
	server := &http.Server{Addr: "127.0.0.1:" + os.Args[1], Handler: h2c.NewHandler(handler, &http2.Server{MaxConcurrentStreams: 1000})}
	panic(server.ListenAndServe())
}

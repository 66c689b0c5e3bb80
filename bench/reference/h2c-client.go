// A reference HTTP/2 client outside Node, for bench/dispatch.ts (b): `concurrency` goroutines POST chat bodies over
// one h2c connection, each sending its next call when the last returns, and it prints the rate and its share of
// concurrency / 50 ms. Driven against lote's simulator it shows what the machine and the simulator allow when the
// client is not Node. See README.md here; not part of `npm run bench` or CI.
package main

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: h2c-client URL CONCURRENCY COUNT   (URL like http://127.0.0.1:8100/v1/chat/completions)")
		os.Exit(2)
	}
	url := os.Args[1]
	concurrency, _ := strconv.Atoi(os.Args[2])
	count, _ := strconv.Atoi(os.Args[3])
	// h2c with prior knowledge: the "TLS" dial is a plain TCP dial.
	transport := &http2.Transport{AllowHTTP: true, DialTLS: func(network, addr string, _ *tls.Config) (net.Conn, error) {
		return net.Dial(network, addr)
	}}
	client := &http.Client{Transport: transport}
	body := []byte(`{"model":"bench-slow","messages":[{"role":"user","content":"Summarise lorem ipsum dolor sit amet in two sentences."}],"max_tokens":64}`)
	var next int64
	var wg sync.WaitGroup
	started := time.Now()
	for i := 0; i < concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for atomic.AddInt64(&next, 1) <= int64(count) {
				r, err := client.Post(url, "application/json", bytes.NewReader(body))
				if err != nil {
					panic(err)
				}
				io.Copy(io.Discard, r.Body)
				r.Body.Close()
			}
		}()
	}
	wg.Wait()
	rate := float64(count) / time.Since(started).Seconds()
	fmt.Printf("go h2c client: %.0f calls/s at %d in flight = %.3f of %d/s if each call took 50 ms\n", rate, concurrency, rate/float64(concurrency*20), concurrency*20)
}

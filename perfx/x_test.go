package perfx
import ("testing";"fmt";"sort";"math/rand";"hash/fnv";"strconv")
func score(p int, agent string) uint64 {
	h := fnv.New64a(); h.Write([]byte(agent)); h.Write([]byte{0}); h.Write(strconv.AppendInt(nil, int64(p), 10))
	x := h.Sum64(); x ^= x >> 30; x *= 0xbf58476d1ce4e5b9; x ^= x >> 27; x *= 0x94d049bb133111eb; x ^= x >> 31; return x }
func greedy(P int, agents []string) []string {
	n:=len(agents); cp:=(P+n-1)/n+SLACK
	type pr struct{p int; a string; s uint64}
	var all []pr
	for p:=0;p<P;p++{ for _,a:=range agents{ all=append(all,pr{p,a,score(p,a)})}}
	sort.Slice(all,func(i,j int)bool{ if all[i].s!=all[j].s {return all[i].s>all[j].s}; if all[i].a!=all[j].a{return all[i].a<all[j].a}; return all[i].p<all[j].p})
	own:=make([]string,P); load:=map[string]int{}
	for _,x:=range all{ if own[x.p]!="" || load[x.a]>=cp {continue}; own[x.p]=x.a; load[x.a]++}
	return own }
func moves(a,b []string) int { m:=0; for i:=range a{ if a[i]!=b[i]{m++}}; return m }
func TestX(t *testing.T){
 P:=64; worst:=map[string]int{}
 r:=rand.New(rand.NewSource(1))
 for trial:=0; trial<300; trial++{
  pool:=[]string{}; for i:=0;i<12;i++{pool=append(pool,fmt.Sprintf("h%d-%d",trial,r.Intn(100000)))}
  cur:=[]string{pool[0]}; next:=1
  prev:=greedy(P,cur)
  for step:=0;step<40;step++{
   n:=len(cur); var kind string
   if (n<10 && r.Intn(2)==0 && next<len(pool)) || n==1 { cur=append(cur,pool[next]); next++; kind="join"} else { i:=r.Intn(n); cur=append(append([]string{},cur[:i]...),cur[i+1:]...); kind="leave"}
   if next>=len(pool){ next=len(pool)-1 }
   now:=greedy(P,cur); m:=moves(prev,now); b:=(P+n-1)/n+1
   if m-b>worst[kind]{worst[kind]=m-b}
   prev=now
  }
 }
 fmt.Println("worst excess",worst)
}
